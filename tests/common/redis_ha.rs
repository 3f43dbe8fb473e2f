//! Redis topologies for the high-availability tests (issue 24), made of
//! Debian's `redis-server` and `redis-sentinel` 7.0 processes on free
//! loopback ports: a standalone instance, a Redis Cluster of 3 masters and
//! 3 replicas, and 1 master + 1 replica watched by 3 sentinels. Each kills
//! its processes (SIGKILL) and removes its scratch directory on drop; the
//! directory, with every process's log, is kept when the test panics.
//!
//! The tests read the topologies' state with `redis-cli`, as an operator
//! would; the waits are bounded and poll every [`POLL`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the waits here ask Redis again.
pub const POLL: Duration = Duration::from_millis(25);

/// Upper bound for a topology to form (cluster created and agreed, or
/// sentinels discovering each other), generous for a loaded 2-core host.
pub const FORM: Duration = Duration::from_secs(40);

/// `cluster-node-timeout` of [`RedisCluster`], in milliseconds: a master
/// unreachable this long is suspected, and its replica is promoted about
/// 1–2 such periods later.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

/// `down-after-milliseconds` of [`RedisSentinel`]'s sentinels.
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;

/// `count` loopback ports, all free at once when this returns (held
/// together, so they differ).
pub fn free_ports(count: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `redis-cli -p PORT ARGS` (raw replies, as redis-cli prints them when
/// its output is not a terminal); `None` when it cannot connect, the
/// command fails, the reply is empty, or none comes within 5 s (something
/// else listens on the port).
pub async fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let run = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .ok()?
        .expect("redis-cli is not installed: run scripts/install-test-deps.sh");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let failed = !output.status.success()
        || text.starts_with("Could not connect")
        || text.starts_with("ERR")
        || text.is_empty();
    (!failed).then_some(text)
}

/// The value of `field` in the `field:value` lines `command` answers
/// (`INFO replication`, `CLUSTER INFO`).
pub async fn info_field(port: u16, command: &[&str], field: &str) -> Option<String> {
    let text = redis_cli(port, command).await?;
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .map(str::to_owned)
}

/// Polls `check` every [`POLL`] until it holds; returns how long that took.
/// Panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// A `redis-server` (or `redis-sentinel`) of a test, on `port`; SIGKILLed
/// on drop. Its log is `redis-PORT.log` in its topology's directory.
pub struct RedisProcess {
    child: Option<Child>,
    pub port: u16,
}

impl RedisProcess {
    /// Runs `program` with `args` (its own `--port`, `--dir` etc. are the
    /// caller's) and waits until it answers `PING`.
    async fn spawn(program: &str, port: u16, dir: &Path, args: &[String]) -> Self {
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} ({e}) is not installed: run scripts/install-test-deps.sh")
            });
        let mut process = Self {
            child: Some(child),
            port,
        };
        let start = Instant::now();
        while redis_cli(port, &["PING"]).await.as_deref() != Some("PONG") {
            // Exited (a bad directive, or the port taken meanwhile): say
            // why now, not after FORM.
            let exited = process.child.as_mut().unwrap().try_wait().unwrap();
            if let Some(status) = exited {
                let log = std::fs::read_to_string(dir.join(format!("redis-{port}.log")));
                panic!(
                    "{program} on port {port} exited ({status}): {}",
                    log.unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < FORM,
                "{program} on port {port}: no PONG within {FORM:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        process
    }

    /// A `redis-server` on `port`, without persistence, with its working
    /// directory in `dir`, and `extra` directives (`--name value`).
    pub async fn server(port: u16, dir: &Path, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dir",
            dir.to_str().unwrap(),
            "--save",
            "",
            "--appendonly",
            "no",
            // A replica syncs at once, not 5 s later (Redis 7's default).
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn("redis-server", port, dir, &args).await
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the process still runs (not [`RedisProcess::sigkill`]ed).
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the running process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: kill(2) on our own child process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// SIGKILL, then reap: no goodbye to its replicas, clients or peers.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// `127.0.0.1:P1,127.0.0.1:P2,…` of `processes`.
fn addr_list(processes: &[RedisProcess]) -> String {
    let addrs: Vec<String> = processes.iter().map(RedisProcess::addr).collect();
    addrs.join(",")
}

/// Kills `processes`, then removes `dir` unless the thread is panicking
/// (then it says where the logs are).
fn tear_down(processes: &mut [RedisProcess], dir: &Path) {
    processes.iter_mut().for_each(RedisProcess::sigkill);
    if std::thread::panicking() {
        eprintln!("Redis logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One standalone `redis-server`, as `--broker redis://…` uses today.
pub struct RedisStandalone {
    pub redis: RedisProcess,
    dir: PathBuf,
}

impl RedisStandalone {
    pub async fn start() -> Self {
        let dir = super::scratch_dir("redis");
        let redis = RedisProcess::server(free_ports(1)[0], &dir, &[]).await;
        Self { redis, dir }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.redis.addr())
    }

    /// Starts `redis-server` again on the same port, empty (after
    /// [`RedisProcess::sigkill`] of [`RedisStandalone::redis`]).
    pub async fn restart(&mut self) {
        self.redis.sigkill();
        self.redis = RedisProcess::server(self.redis.port, &self.dir, &[]).await;
    }
}

impl Drop for RedisStandalone {
    fn drop(&mut self) {
        tear_down(std::slice::from_mut(&mut self.redis), &self.dir);
    }
}

/// One line of `CLUSTER NODES`: a node as some node of the cluster sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterNode {
    pub id: String,
    /// Its client port.
    pub port: u16,
    pub master: bool,
    /// Marked `fail` (or `fail?`).
    pub failing: bool,
    /// A replica's master id.
    pub master_id: Option<String>,
    /// Slot ranges, inclusive (masters only).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (id, address, flags, master_id) = (
            fields.first()?,
            fields.get(1)?,
            fields.get(2)?,
            fields.get(3)?,
        );
        // 127.0.0.1:PORT@BUSPORT
        let port = address
            .split('@')
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()?;
        let slots = fields
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        Some(Self {
            id: id.to_string(),
            port,
            master: flags.split(',').any(|f| f == "master"),
            failing: flags.split(',').any(|f| f == "fail" || f == "fail?"),
            master_id: (*master_id != "-").then(|| master_id.to_string()),
            slots,
        })
    }

    /// Whether this master serves `slot`.
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// A Redis Cluster of 3 masters and 3 replicas (`cluster-enabled yes`,
/// `cluster-node-timeout` [`CLUSTER_NODE_TIMEOUT_MS`]), made with
/// `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`.
pub struct RedisCluster {
    /// The 6 nodes; which are masters is for [`RedisCluster::topology`]
    /// to say (it changes on failover).
    pub nodes: Vec<RedisProcess>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts the 6 nodes and creates the cluster; returns once every node
    /// reports `cluster_state:ok`, knows all 6, sees 3 masters covering
    /// the 16384 slots with a replica each, and every replica's link to its
    /// master is up (so that a failover can happen).
    pub async fn start() -> Self {
        let dir = super::scratch_dir("redis-cluster");
        let ports = free_ports(12);
        let mut nodes = Vec::new();
        for (i, pair) in ports.chunks(2).enumerate() {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let (port, bus) = (pair[0], pair[1].to_string());
            let conf = node_dir.join("nodes.conf");
            let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                conf.to_str().unwrap(),
                "--cluster-node-timeout",
                &timeout,
            ];
            nodes.push(RedisProcess::server(port, &node_dir, &extra).await);
        }
        let cluster = Self { nodes, dir };
        let mut create = tokio::process::Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes.iter().map(RedisProcess::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null());
        let created = tokio::time::timeout(FORM, create.output())
            .await
            .expect("redis-cli --cluster create timed out")
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let formed = wait_until(FORM, "the cluster forms", || cluster.formed()).await;
        eprintln!("redis cluster: formed {formed:?} after redis-cli --cluster create");
        cluster
    }

    async fn formed(&self) -> bool {
        for node in &self.nodes {
            let info = redis_cli(node.port, &["CLUSTER", "INFO"]).await;
            let info = info.unwrap_or_default();
            if !info.contains("cluster_state:ok") || !info.contains("cluster_known_nodes:6") {
                return false;
            }
            let view = self.topology_from(node.port).await;
            let masters = view
                .iter()
                .filter(|n| n.master && !n.slots.is_empty())
                .count();
            let replicas = view.iter().filter(|n| n.master_id.is_some()).count();
            if masters != 3 || replicas != 3 {
                return false;
            }
            if view
                .iter()
                .any(|n| n.port == node.port && n.master_id.is_some())
                && info_field(node.port, &["INFO", "replication"], "master_link_status")
                    .await
                    .as_deref()
                    != Some("up")
            {
                return false;
            }
        }
        true
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,…`: every node's address, as seeds for a
    /// cluster client.
    pub fn seeds(&self) -> String {
        addr_list(&self.nodes)
    }

    /// The cluster as node `port` sees it (empty when it does not answer).
    pub async fn topology_from(&self, port: u16) -> Vec<ClusterNode> {
        let text = redis_cli(port, &["CLUSTER", "NODES"]).await;
        text.unwrap_or_default()
            .lines()
            .filter_map(ClusterNode::parse)
            .collect()
    }

    /// The cluster as the first live node sees it.
    pub async fn topology(&self) -> Vec<ClusterNode> {
        let live = self.nodes.iter().find(|n| n.alive()).expect("a live node");
        self.topology_from(live.port).await
    }

    /// The node process on `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// Whether every live node says `cluster_state:ok`.
    pub async fn all_ok(&self) -> bool {
        for node in self.nodes.iter().filter(|n| n.alive()) {
            let state = info_field(node.port, &["CLUSTER", "INFO"], "cluster_state").await;
            if state.as_deref() != Some("ok") {
                return false;
            }
        }
        true
    }

    /// The port of the master that serves `slot` in every live node's
    /// view, when they all agree (gossip has spread a failover).
    pub async fn agreed_owner(&self, slot: u16) -> Option<u16> {
        let mut agreed = None;
        for node in self.nodes.iter().filter(|n| n.alive()) {
            let view = self.topology_from(node.port).await;
            let owner = view
                .iter()
                .find(|n| n.master && !n.failing && n.owns(slot))?;
            if agreed.is_some_and(|port| port != owner.port) {
                return None;
            }
            agreed = Some(owner.port);
        }
        agreed
    }

    /// The slot `key` hashes to (`CLUSTER KEYSLOT`).
    pub async fn keyslot(&self, key: &str) -> u16 {
        let live = self.nodes.iter().find(|n| n.alive()).expect("a live node");
        let slot = redis_cli(live.port, &["CLUSTER", "KEYSLOT", key]).await;
        slot.and_then(|s| s.parse().ok()).expect("CLUSTER KEYSLOT")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        tear_down(&mut self.nodes, &self.dir);
    }
}

/// 1 master and 1 replica of `redis-server`, watched by 3 `redis-sentinel`
/// processes (quorum 2, `down-after-milliseconds`
/// [`SENTINEL_DOWN_AFTER_MS`]) under the name [`RedisSentinel::NAME`].
pub struct RedisSentinel {
    /// The data nodes: `[0]` starts as the master, `[1]` as its replica.
    pub data: Vec<RedisProcess>,
    pub sentinels: Vec<RedisProcess>,
    dir: PathBuf,
}

impl RedisSentinel {
    /// The monitored master's name.
    pub const NAME: &'static str = "ringcast";

    /// Starts the master, the replica and the sentinels; returns once the
    /// replica is synced and every sentinel knows the master, the replica
    /// and the 2 other sentinels (then a failover can be agreed).
    pub async fn start() -> Self {
        let dir = super::scratch_dir("redis-sentinel");
        let ports = free_ports(5);
        let master = RedisProcess::server(ports[0], &dir, &[]).await;
        let master_port = master.port.to_string();
        let replica_of = ["--replicaof", "127.0.0.1", &master_port];
        let replica = RedisProcess::server(ports[1], &dir, &replica_of).await;
        let mut sentinels = Vec::new();
        for &port in &ports[2..] {
            // A sentinel rewrites its config file: one each.
            let conf = dir.join(format!("sentinel-{port}.conf"));
            let text = format!(
                "bind 127.0.0.1\nport {port}\ndir {dir}\n\
                 sentinel monitor {name} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {name} {down}\n\
                 sentinel failover-timeout {name} 10000\n",
                dir = dir.display(),
                name = Self::NAME,
                master = master.port,
                down = SENTINEL_DOWN_AFTER_MS,
            );
            std::fs::write(&conf, text).unwrap();
            let args = [conf.to_str().unwrap().to_owned()];
            sentinels.push(RedisProcess::spawn("redis-sentinel", port, &dir, &args).await);
        }
        let setup = Self {
            data: vec![master, replica],
            sentinels,
            dir,
        };
        let formed = wait_until(FORM, "the sentinels agree", || setup.formed()).await;
        eprintln!("redis sentinel: formed {formed:?} after the sentinels started");
        setup
    }

    async fn formed(&self) -> bool {
        let link = info_field(
            self.data[1].port,
            &["INFO", "replication"],
            "master_link_status",
        );
        if link.await.as_deref() != Some("up") {
            return false;
        }
        for sentinel in &self.sentinels {
            let Some(text) = redis_cli(sentinel.port, &["SENTINEL", "MASTER", Self::NAME]).await
            else {
                return false;
            };
            // Raw replies: field and value on alternate lines.
            let lines: Vec<&str> = text.lines().collect();
            let field = |name: &str| {
                lines
                    .chunks(2)
                    .find(|kv| kv[0] == name)
                    .and_then(|kv| kv.get(1).copied())
            };
            if field("num-other-sentinels") != Some("2")
                || field("num-slaves") != Some("1")
                || field("flags") != Some("master")
            {
                return false;
            }
        }
        true
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`: the sentinels' addresses.
    pub fn sentinel_addrs(&self) -> String {
        addr_list(&self.sentinels)
    }

    /// The master's port per `SENTINEL GET-MASTER-ADDR-BY-NAME`, asked of
    /// sentinel `i`.
    pub async fn master_port(&self, i: usize) -> Option<u16> {
        let port = self.sentinels[i].port;
        let text = redis_cli(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::NAME]).await?;
        text.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        // Sentinels first, so that none reconfigures a dying data node.
        self.sentinels.iter_mut().for_each(RedisProcess::sigkill);
        tear_down(&mut self.data, &self.dir);
    }
}
