//! `compare`: start ringcast and each peer server in turn on loopback, run
//! the same soak, fanout and echo against each with this generator, and
//! print ringcast / peer ratios.

use crate::echo::{self, Echo, EchoResult};
use crate::fanout::{self, Fanout, FanoutResult};
use crate::load::Transport;
use crate::report::{write_json, Meta};
use crate::session::{Common, Outcome};
use crate::soak::{self, Soak, SoakResult};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Flags of `ringcast-bench compare`.
#[derive(clap::Args, Clone, Debug)]
pub struct Compare {
    /// The ringcast binary [default: `ringcast` beside this binary].
    #[arg(long)]
    pub ringcast_bin: Option<PathBuf>,
    /// Directory holding the peer binaries `peer-tungstenite` and
    /// `peer-fastwebsockets` [default: this binary's directory].
    #[arg(long)]
    pub peers_dir: Option<PathBuf>,
    /// Soak: idle connections opened and held.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Soak: how long they are held.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Fanout: subscribers.
    #[arg(long, default_value_t = 5_000)]
    pub subscribers: usize,
    /// Fanout: messages published.
    #[arg(long, default_value_t = 20)]
    pub messages: u32,
    /// Fanout: time between publishes.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Echo: connections.
    #[arg(long, default_value_t = 100)]
    pub echo_connections: usize,
    /// Echo: message size in bytes.
    #[arg(long, default_value_t = 32)]
    pub echo_size: usize,
    /// Echo: how long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub echo_duration: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// A server under test: its name, how to start it, and its publish path.
struct Contender {
    name: &'static str,
    command: Command,
    /// Publish URL path on the API address.
    publish_path: &'static str,
}

/// A started server; killed on drop.
struct Running {
    child: Child,
    ws: String,
    api: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Contender {
    /// Starts the server and reads its `listening ws=… api=…` line.
    fn start(mut self) -> Result<Running, String> {
        let mut child = self
            .command
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.name))?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", self.name))?;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .map(str::to_string)
        };
        match (field("ws="), field("api=")) {
            (Some(ws), Some(api)) => Ok(Running { child, ws, api }),
            _ => {
                let _ = child.kill();
                Err(format!(
                    "{} did not print its addresses: {line:?}",
                    self.name
                ))
            }
        }
    }
}

/// One server's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub server: &'static str,
    pub soak: SoakResult,
    pub fanout: FanoutResult,
    pub echo: EchoResult,
}

impl Entry {
    /// (name, value, higher is better) for the ratio table.
    fn figures(&self) -> [(&'static str, f64, bool); 4] {
        let m = &self.soak.memory;
        [
            (
                "idle RSS per connection (B)",
                m.server_rss_per_connection.unwrap_or(f64::NAN),
                false,
            ),
            (
                "connect rate (/s)",
                self.soak.run.ramp.connect_rate_per_s,
                true,
            ),
            ("fan-out p99 (µs)", self.fanout.latency.p99_us as f64, false),
            ("echo messages/s", self.echo.messages_per_s, true),
        ]
    }
}

/// compare.json.
#[derive(Serialize)]
struct CompareResult<'a> {
    #[serde(flatten)]
    meta: Meta,
    entries: &'a [Entry],
    /// `ratios[metric][peer]`: ringcast / peer.
    ratios: Vec<(String, Vec<(String, f64)>)>,
}

/// The directory this binary is in, where cargo also puts the server and
/// the peers.
fn own_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    Ok(exe.with_file_name(""))
}

/// Runs the comparison; true when every run went without failure or loss.
///
/// # Errors
/// A message when a server cannot be started or a run cannot start.
pub fn run(args: &Compare) -> Result<bool, String> {
    let meta = Meta::now("compare");
    // The peers use ordinary descriptors: let them inherit the hard limit.
    ringcast_engine::capacity::raise_nofile_limit()
        .map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let ringcast = match &args.ringcast_bin {
        Some(path) => path.clone(),
        None => own_dir()?.join("ringcast"),
    };
    let peers_dir = match &args.peers_dir {
        Some(dir) => dir.clone(),
        None => own_dir()?,
    };
    let mut serve = Command::new(&ringcast);
    serve.args(["serve", "--echo"]);
    let contenders = [
        Contender {
            name: "ringcast",
            command: serve,
            publish_path: "/publish?topic=t",
        },
        Contender {
            name: "tokio-tungstenite",
            command: Command::new(peers_dir.join("peer-tungstenite")),
            publish_path: "/broadcast",
        },
        Contender {
            name: "fastwebsockets",
            command: Command::new(peers_dir.join("peer-fastwebsockets")),
            publish_path: "/broadcast",
        },
    ];
    let mut entries = Vec::new();
    for contender in contenders {
        let (name, publish_path) = (contender.name, contender.publish_path);
        eprintln!("compare: {name}");
        let server = contender.start()?;
        let common = |what: &str| Common {
            server_pid: Some(server.child.id()),
            out: args.common.out.as_ref().map(|d| d.join(name).join(what)),
            ..args.common.clone()
        };
        let soak = soak::run(&Soak {
            url: format!("ws://{}/ws?topic=t", server.ws),
            connections: args.connections,
            hold: args.hold,
            ping_interval: None,
            transport: Transport::Websocket,
            common: common("soak"),
        })?;
        let fanout = fanout::run(&Fanout {
            url: vec![format!("ws://{}/ws?topic=t", server.ws)],
            publish_url: format!("http://{}{publish_path}", server.api),
            subscribers: args.subscribers,
            messages: args.messages,
            interval: args.interval,
            size: 64,
            payload: crate::load::Filler::Spaces,
            drain_timeout: Duration::from_secs(10),
            subprotocol: None,
            transport: Transport::Websocket,
            common: common("fanout"),
        })?;
        let echo = echo::run(&Echo {
            url: format!("ws://{}/echo", server.ws),
            connections: args.echo_connections,
            size: args.echo_size,
            duration: args.echo_duration,
            common: common("echo"),
        })?;
        drop(server);
        entries.push(Entry {
            server: name,
            soak,
            fanout,
            echo,
        });
    }
    let ok = entries
        .iter()
        .all(|e| e.soak.ok() && e.fanout.ok() && e.echo.ok());
    let (table, ratios) = ratio_table(&entries);
    println!("{table}");
    if let Some(dir) = &args.common.out {
        let result = CompareResult {
            meta,
            entries: &entries,
            ratios,
        };
        write_json(dir, "compare.json", &result)?;
        std::fs::write(dir.join("compare.txt"), format!("{table}\n"))
            .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
    }
    Ok(ok)
}

type Ratios = Vec<(String, Vec<(String, f64)>)>;

/// The printed table, and the ratios for compare.json.
fn ratio_table(entries: &[Entry]) -> (comfy_table::Table, Ratios) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    let (ours, peers) = entries.split_first().expect("ringcast runs first");
    let mut header = vec!["metric".to_string()];
    header.extend(entries.iter().map(|e| e.server.to_string()));
    header.extend(peers.iter().map(|p| format!("ringcast / {}", p.server)));
    table.set_header(header);
    let mut ratios = Vec::new();
    for (i, (metric, value, higher_better)) in ours.figures().into_iter().enumerate() {
        let better = if higher_better { "higher" } else { "lower" };
        let mut row = vec![format!("{metric}, {better} is better")];
        row.extend(entries.iter().map(|e| format!("{:.0}", e.figures()[i].1)));
        let mut per_peer = Vec::new();
        for peer in peers {
            let ratio = value / peer.figures()[i].1;
            row.push(format!("{ratio:.2}"));
            per_peer.push((peer.server.to_string(), ratio));
        }
        table.add_row(row);
        ratios.push((metric.to_string(), per_peer));
    }
    (table, ratios)
}
