//! How many concurrent connections a host can hold, and which limit binds
//! first. The server's startup log and `ringcast doctor` (behind
//! `tuning/check.sh`) both use this one computation.

use std::io;

/// Kernel slab per TCP socket, in bytes (measured on Linux 6.18: tcp_sock
/// alone is 2368 B; see shared/PLATFORM.md).
pub const KERNEL_BYTES_PER_SOCKET: u64 = 4300;
/// Kernel memory per armed multishot receive, in bytes (measured).
pub const KERNEL_BYTES_PER_ARMED_RECV: u64 = 900;
/// User-space bytes per idle connection budgeted: the 80-byte table record
/// plus topic membership and timer entry, rounded up.
pub const USER_BYTES_PER_CONNECTION: u64 = 128;
/// Share of total memory the connections may take; the rest is left to
/// socket buffers in flight, the page cache and other processes.
pub const MEMORY_SHARE_PERCENT: u64 = 80;
/// Socket-buffer pages budgeted per connection in `net.ipv4.tcp_mem`: one
/// page in flight to every subscriber during a fan-out.
pub const TCP_MEM_PAGES_PER_CONNECTION: u64 = 1;
/// Listen backlog wanted for reconnect storms at 100k+ connections.
pub const STORM_BACKLOG: u64 = 65535;

/// Connections one worker's fixed-file table holds: its share of
/// `max_connections` plus headroom (a sixteenth, at least 64 slots) for
/// connections beyond the limit to be answered 503, capped by RLIMIT_NOFILE
/// (`nofile`), since `IORING_REGISTER_FILES_SPARSE` refuses more (EMFILE).
/// The process ceiling is therefore about `workers × min(nofile,
/// ⌈max_connections / workers⌉ + headroom)`.
pub fn table_size(workers: usize, max_connections: usize, nofile: u64) -> u32 {
    let share = max_connections.div_ceil(workers.max(1)).max(1) as u64;
    let slots = share.saturating_add((share / 16).max(64));
    slots.min(nofile).min(u64::from(u32::MAX)) as u32
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns it. Each
/// worker's fixed-file table may hold at most this many connections.
///
/// # Errors
/// `getrlimit(2)` or `setrlimit(2)` failures.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// What the doctor reads off a host. `None` where the host has no such
/// setting (e.g. conntrack not loaded).
#[derive(Debug, Clone)]
pub struct Host {
    /// Worker threads the server will run.
    pub workers: u64,
    /// RLIMIT_NOFILE soft limit (the server raises it to the hard limit).
    pub nofile_soft: u64,
    /// RLIMIT_NOFILE hard limit: each worker's fixed-file table cap.
    pub nofile_hard: u64,
    /// fs.nr_open: the highest value a hard RLIMIT_NOFILE may be raised to.
    pub nr_open: u64,
    /// fs.file-max: open files system-wide (each socket is one).
    pub file_max: u64,
    /// MemTotal, in bytes.
    pub mem_total: u64,
    /// The third (pressure) value of net.ipv4.tcp_mem, in pages.
    pub tcp_mem_max_pages: Option<u64>,
    /// net.core.somaxconn.
    pub somaxconn: u64,
    /// net.netfilter.nf_conntrack_max, if the module is loaded.
    pub conntrack_max: Option<u64>,
    /// Whether conntrack is tracking connections (entries present).
    pub conntrack_active: bool,
    /// net.ipv4.ip_local_port_range (for a load generator on this host).
    pub port_range: Option<(u64, u64)>,
}

/// One row of the doctor's table.
#[derive(Debug, Clone)]
pub struct Check {
    /// The limit's name.
    pub limit: &'static str,
    /// Its current value.
    pub current: String,
    /// What the target needs.
    pub needed: String,
    /// Whether the current value is enough.
    pub ok: bool,
    /// Connections this limit allows on its own, if it caps them.
    pub ceiling: Option<u64>,
    /// What to change, and why, when not `ok`.
    pub advice: String,
}

/// The doctor's verdict for a target.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// Every limit checked.
    pub checks: Vec<Check>,
    /// Concurrent connections this host can hold.
    pub ceiling: u64,
    /// The limit that binds first.
    pub binding: &'static str,
}

impl Assessment {
    /// Whether the target is within the ceiling.
    pub fn reachable(&self, target: u64) -> bool {
        target <= self.ceiling
    }
}

/// Checks every limit against a target of `target` concurrent connections.
pub fn assess(host: &Host, target: u64) -> Assessment {
    let workers = host.workers.max(1);
    let per_worker = target.div_ceil(workers);
    let mut checks = Vec::new();
    let mut row = |limit, current: String, needed: String, ok, ceiling, advice: String| {
        checks.push(Check {
            limit,
            current,
            needed,
            ok,
            ceiling,
            advice,
        });
    };

    row(
        "RLIMIT_NOFILE hard",
        host.nofile_hard.to_string(),
        format!("{per_worker} ({target} / {workers} workers)"),
        host.nofile_hard >= per_worker,
        Some(host.nofile_hard.saturating_mul(workers)),
        format!(
            "each worker's io_uring fixed-file table is capped at RLIMIT_NOFILE: set LimitNOFILE={} \
             (tuning/ringcast.service) or nofile in tuning/limits.d/ringcast.conf",
            per_worker.max(1_048_576)
        ),
    );
    row(
        "RLIMIT_NOFILE soft",
        host.nofile_soft.to_string(),
        "any (raised to hard at start)".into(),
        true,
        None,
        String::new(),
    );
    row(
        "fs.nr_open",
        host.nr_open.to_string(),
        per_worker.to_string(),
        host.nr_open >= per_worker,
        Some(host.nr_open.saturating_mul(workers)),
        "the hard open-file limit cannot be raised above fs.nr_open: tuning/apply.sh sets it"
            .into(),
    );
    let files_needed = target + 10_000;
    row(
        "fs.file-max",
        host.file_max.to_string(),
        files_needed.to_string(),
        host.file_max >= files_needed,
        Some(host.file_max.saturating_sub(10_000)),
        "every socket is an open file system-wide: tuning/apply.sh raises fs.file-max".into(),
    );
    let per_conn =
        KERNEL_BYTES_PER_SOCKET + KERNEL_BYTES_PER_ARMED_RECV + USER_BYTES_PER_CONNECTION;
    let usable = host.mem_total / 100 * MEMORY_SHARE_PERCENT;
    row(
        "memory",
        format!("{} MiB", host.mem_total >> 20),
        format!("{} MiB ({per_conn} B/connection)", (target * per_conn * 100 / MEMORY_SHARE_PERCENT) >> 20),
        usable / per_conn >= target,
        Some(usable / per_conn),
        format!("{per_conn} bytes per idle connection (kernel socket + armed receive + ringcast): add memory or hosts"),
    );
    if let Some(pages) = host.tcp_mem_max_pages {
        let needed = target * TCP_MEM_PAGES_PER_CONNECTION;
        row(
            "net.ipv4.tcp_mem (max)",
            format!("{pages} pages"),
            format!("{needed} pages"),
            pages >= needed,
            Some(pages / TCP_MEM_PAGES_PER_CONNECTION),
            "past tcp_mem's pressure value the kernel starves socket buffers during fan-out: tuning/apply.sh raises it".into(),
        );
    }
    let backlog = if target >= 100_000 {
        STORM_BACKLOG
    } else {
        4096
    };
    row(
        "net.core.somaxconn",
        host.somaxconn.to_string(),
        backlog.to_string(),
        host.somaxconn >= backlog,
        None,
        "the listen backlog absorbs reconnect storms while workers accept: tuning/apply.sh raises it".into(),
    );
    if let Some(max) = host.conntrack_max {
        let tracking = host.conntrack_active;
        row(
            "net.netfilter.nf_conntrack_max",
            format!("{max}{}", if tracking { "" } else { " (not tracking)" }),
            if tracking { target.to_string() } else { "any while not tracking".into() },
            !tracking || max >= target,
            tracking.then_some(max),
            "with firewall rules loaded every connection takes a conntrack entry: tuning/apply.sh raises the maximum".into(),
        );
    }
    if let Some((low, high)) = host.port_range {
        let ports = high.saturating_sub(low) + 1;
        let sources = target.div_ceil(ports.max(1));
        row(
            "ip_local_port_range (load generator)",
            format!("{low}-{high}"),
            format!("{sources} source address(es) at {ports} ports each"),
            true,
            None,
            String::new(),
        );
    }

    let (binding, ceiling) = checks
        .iter()
        .filter_map(|c| c.ceiling.map(|n| (c.limit, n)))
        .min_by_key(|&(_, n)| n)
        .expect("the open-file limit always caps");
    Assessment {
        checks,
        ceiling,
        binding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This project's machine: 2 cores, 24 GiB, hard limit 20000.
    fn this_machine() -> Host {
        Host {
            workers: 2,
            nofile_soft: 20000,
            nofile_hard: 20000,
            nr_open: 1_048_576,
            file_max: 2_470_938,
            mem_total: 24 << 30,
            tcp_mem_max_pages: Some(576_918),
            somaxconn: 4096,
            conntrack_max: Some(262_144),
            conntrack_active: false,
            port_range: Some((32768, 60999)),
        }
    }

    #[test]
    fn table_size_is_the_share_capped_by_the_limit() {
        assert_eq!(table_size(2, usize::MAX, 20000), 20000);
        assert_eq!(table_size(2, 1000, 20000), 564);
        assert_eq!(table_size(3, 1000, 20000), 398);
        assert_eq!(table_size(1, 160_000, 20000), 20000);
        assert_eq!(table_size(1, 16_000, 20000), 17_000);
    }

    #[test]
    fn this_machine_is_bound_by_the_open_file_limit() {
        let a = assess(&this_machine(), 1_000_000);
        assert_eq!(a.ceiling, 40_000);
        assert_eq!(a.binding, "RLIMIT_NOFILE hard");
        assert!(!a.reachable(1_000_000));
        assert!(a.reachable(40_000));
    }

    #[test]
    fn a_tuned_host_is_bound_by_memory() {
        let mut host = this_machine();
        host.nofile_hard = 2_000_000;
        host.nr_open = 2_000_000;
        host.file_max = 10_000_000;
        host.tcp_mem_max_pages = Some(10_000_000);
        let a = assess(&host, 1_000_000);
        assert_eq!(a.binding, "memory");
        assert!(a.reachable(1_000_000), "ceiling {}", a.ceiling);
    }
}
