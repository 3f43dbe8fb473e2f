//! `ringcast doctor --target N`: reads this host's limits and says whether
//! N concurrent connections fit, which limit binds first, and what to
//! change. `tuning/check.sh` runs it.

use ringcast_engine::capacity::{assess, Host};
use std::process::ExitCode;

/// Flags of `ringcast doctor`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Doctor {
    /// Concurrent connections the host should hold.
    #[arg(long)]
    pub target: u64,
    /// Worker threads the server will run [default: available cores].
    #[arg(long)]
    pub workers: Option<u64>,
}

fn read_sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn sysctl_u64(name: &str) -> Option<u64> {
    read_sysctl(name)?.split_whitespace().next()?.parse().ok()
}

fn sysctl_field(name: &str, index: usize) -> Option<u64> {
    read_sysctl(name)?
        .split_whitespace()
        .nth(index)?
        .parse()
        .ok()
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Reads the limits of this host for `workers` workers.
fn read_host(workers: u64) -> Host {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    Host {
        workers,
        nofile_soft: limit.rlim_cur,
        nofile_hard: limit.rlim_max,
        nr_open: sysctl_u64("fs.nr_open").unwrap_or(1_048_576),
        file_max: sysctl_u64("fs.file-max").unwrap_or(u64::MAX),
        mem_total: mem_total(),
        tcp_mem_max_pages: sysctl_field("net.ipv4.tcp_mem", 2),
        somaxconn: sysctl_u64("net.core.somaxconn").unwrap_or(4096),
        conntrack_max: sysctl_u64("net.netfilter.nf_conntrack_max"),
        conntrack_active: sysctl_u64("net.netfilter.nf_conntrack_count").unwrap_or(0) > 0,
        port_range: sysctl_field("net.ipv4.ip_local_port_range", 0)
            .zip(sysctl_field("net.ipv4.ip_local_port_range", 1)),
    }
}

/// Prints the table and verdict; exits 1 when the target is out of reach.
pub fn run(doctor: &Doctor) -> ExitCode {
    let workers = doctor
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
    let host = read_host(workers);
    let a = assess(&host, doctor.target);
    println!(
        "ringcast doctor: target {} concurrent connections, {workers} workers",
        doctor.target
    );
    println!();
    println!(
        "{:<38} {:<28} {:<44} STATUS",
        "LIMIT", "CURRENT", "NEEDED FOR TARGET"
    );
    for c in &a.checks {
        let status = if c.ok { "OK" } else { "LOW" };
        println!(
            "{:<38} {:<28} {:<44} {status}",
            c.limit, c.current, c.needed
        );
    }
    println!();
    println!(
        "ceiling: {} concurrent connections on this host; the limit that binds first is {}",
        a.ceiling, a.binding
    );
    let low: Vec<_> = a.checks.iter().filter(|c| !c.ok).collect();
    if !low.is_empty() {
        println!();
        println!("to change:");
        for c in low {
            println!("  - {}: {}", c.limit, c.advice);
        }
    }
    println!();
    if a.reachable(doctor.target) {
        println!("verdict: target {} is reachable", doctor.target);
        ExitCode::SUCCESS
    } else {
        println!(
            "verdict: target {} is NOT reachable (ceiling {}, bound by {})",
            doctor.target, a.ceiling, a.binding
        );
        ExitCode::FAILURE
    }
}
