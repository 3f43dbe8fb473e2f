//! The `--broker` values, read as one of three Redis deployments. The
//! flag splits on commas, so `redis+cluster://a:7000,b:7001` arrives as
//! `redis+cluster://a:7000` and `b:7001`: the items after a cluster or
//! Sentinel URL without a scheme of their own are its further addresses.
//! Errors name the scheme only: a URL may hold a password.

/// The Redis deployment of `--broker`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// `redis://HOST:PORT[/DB]` or `rediss://…`, repeatable: standalone
    /// instances, topics spread by jump hash.
    Instances(Vec<String>),
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]` (or `rediss+cluster://`
    /// for TLS): one Redis Cluster, found from these seed nodes.
    Cluster {
        /// `redis://HOST:PORT` (or `rediss://`) of each seed.
        seeds: Vec<String>,
        /// TLS to every node.
        tls: bool,
    },
    /// `redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME` (or
    /// `rediss+sentinel://`): the master that these sentinels name.
    Sentinel {
        /// `redis://HOST:PORT` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
        /// TLS to the data nodes.
        tls: bool,
    },
}

const SCHEMES: &str = "redis://, rediss://, redis+cluster://, rediss+cluster://, \
                       redis+sentinel:// or rediss+sentinel://";

impl Topology {
    /// Reads the `--broker` values (non-empty).
    ///
    /// # Errors
    /// An unknown scheme, modes mixed, a cluster or Sentinel address that
    /// is not `HOST:PORT`, or a Sentinel URL without the master's name.
    pub fn parse(urls: &[String]) -> Result<Self, String> {
        let first = urls.first().ok_or("--broker needs a URL")?;
        let (scheme, rest) = first
            .split_once("://")
            .ok_or_else(|| format!("--broker must be a {SCHEMES} URL"))?;
        let later = |what: &str| -> Result<Vec<&str>, String> {
            urls[1..]
                .iter()
                .map(|u| match u.split_once("://") {
                    Some((s, r)) if s == scheme => Ok(r),
                    Some(_) => Err(format!(
                        "--broker: a {scheme}:// {what} mixed with another scheme"
                    )),
                    None => Ok(u.as_str()),
                })
                .collect()
        };
        match scheme {
            "redis" | "rediss" => {
                if let Some(url) = urls
                    .iter()
                    .find(|u| !u.starts_with("redis://") && !u.starts_with("rediss://"))
                {
                    return Err(match url.split_once("://") {
                        Some((s, _)) => format!(
                            "--broker: standalone redis:// or rediss:// URLs mixed with {s}://"
                        ),
                        None => format!("--broker must be a {SCHEMES} URL"),
                    });
                }
                Ok(Topology::Instances(urls.to_vec()))
            }
            "redis+cluster" | "rediss+cluster" => {
                let tls = scheme == "rediss+cluster";
                let mut seeds = vec![rest];
                seeds.extend(later("cluster")?);
                let seeds = seeds
                    .into_iter()
                    .map(|s| address(s, tls))
                    .collect::<Result<_, _>>()?;
                Ok(Topology::Cluster { seeds, tls })
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme == "rediss+sentinel";
                let mut all = vec![rest];
                all.extend(later("sentinel")?);
                let last = all.pop().unwrap_or_default();
                let (last, master) = last.split_once('/').ok_or(
                    "--broker redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME: the master's name is missing",
                )?;
                if master.is_empty() || master.contains(['/', '?', '@']) {
                    return Err("--broker redis+sentinel://…/MASTER_NAME: not a master name".into());
                }
                all.push(last);
                let sentinels = all
                    .into_iter()
                    .map(|s| address(s, false))
                    .collect::<Result<_, _>>()?;
                Ok(Topology::Sentinel {
                    sentinels,
                    master: master.to_owned(),
                    tls,
                })
            }
            other => Err(format!("--broker must be a {SCHEMES} URL, not {other}://")),
        }
    }

    /// Whether any connection uses TLS.
    pub fn tls(&self) -> bool {
        match self {
            Topology::Instances(urls) => urls.iter().any(|u| u.starts_with("rediss://")),
            Topology::Cluster { tls, .. } | Topology::Sentinel { tls, .. } => *tls,
        }
    }

    /// How many interest and read queues the broker serves: one per
    /// standalone instance, else one.
    pub fn queues(&self) -> usize {
        match self {
            Topology::Instances(urls) => urls.len(),
            _ => 1,
        }
    }
}

/// `redis://[USERINFO@]HOST:PORT` (or `rediss://`) of one cluster or
/// Sentinel address, which must be `[USERINFO@]HOST:PORT`.
fn address(text: &str, tls: bool) -> Result<String, String> {
    let host_port = text.rsplit_once('@').map_or(text, |(_, h)| h);
    let valid = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid || host_port.contains('/') {
        return Err("--broker: a cluster or Sentinel address must be HOST:PORT".into());
    }
    Ok(format!("{}://{text}", if tls { "rediss" } else { "redis" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(items: &[&str]) -> Result<Topology, String> {
        Topology::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_three_modes_are_read_from_comma_split_items() {
        assert_eq!(
            parse(&["redis://a:1", "rediss://b:2/3"]).unwrap(),
            Topology::Instances(vec!["redis://a:1".into(), "rediss://b:2/3".into()])
        );
        assert_eq!(
            parse(&["redis+cluster://a:7000", "b:7001", "redis+cluster://c:7002"]).unwrap(),
            Topology::Cluster {
                seeds: vec![
                    "redis://a:7000".into(),
                    "redis://b:7001".into(),
                    "redis://c:7002".into()
                ],
                tls: false
            }
        );
        assert!(parse(&["rediss+cluster://a:7000"]).unwrap().tls());
        assert_eq!(
            parse(&["redis+sentinel://a:26379", "b:26380/mymaster"]).unwrap(),
            Topology::Sentinel {
                sentinels: vec!["redis://a:26379".into(), "redis://b:26380".into()],
                master: "mymaster".into(),
                tls: false
            }
        );
    }

    #[test]
    fn bad_values_are_refused_without_echoing_them() {
        for bad in [
            &["http://secret@a:1"][..],
            &["redis://a:1", "redis+cluster://b:2"],
            &["redis+cluster://a:1", "redis://b:2"],
            &["redis+cluster://a"],
            &["redis+cluster://a:1/0"],
            &["redis+sentinel://a:1"],
            &["redis+sentinel://a:1/"],
            &["a:1"],
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("secret") && e.starts_with("--broker"), "{e}");
        }
        assert_eq!(parse(&["redis+sentinel://a:1/m"]).unwrap().queues(), 1);
    }
}
