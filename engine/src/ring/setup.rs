//! Ring construction with the best setup flags the kernel accepts.

use io_uring::IoUring;
use std::io;

/// Submission queue entries per ring.
pub const SQ_ENTRIES: u32 = 4096;

/// Completion queue sizes per ring, tried in order: room for a burst of
/// multishot receives and fan-out sends between two loop iterations. A
/// 65536-entry queue is 1 MiB of contiguous kernel memory; on a host whose
/// free memory is fragmented (much page cache), `io_uring_setup` fails with
/// `ENOMEM` for it while smaller queues still fit. A smaller queue only
/// means completions wait in the kernel's overflow list (never dropped)
/// until the loop reaps them.
pub const CQ_ENTRIES: [u32; 3] = [65536, 16384, 4096];

/// Adds setup flags to a ring builder.
type Flags = fn(&mut io_uring::Builder);

/// Builds a ring for one worker thread, trying in order:
/// SINGLE_ISSUER + DEFER_TASKRUN + COOP_TASKRUN (completions run only when
/// this thread waits, no interrupts), the same without COOP_TASKRUN, then
/// COOP_TASKRUN alone, then no flags; each with the largest completion
/// queue of [`CQ_ENTRIES`] the kernel can allocate. Returns the ring and a
/// name for the setup chosen, for the startup log.
///
/// # Errors
/// The last `io_uring_setup(2)` error if no setup works (e.g. io_uring is
/// disabled by `kernel.io_uring_disabled`, or `ENOMEM` when even the
/// smallest queue cannot be allocated).
pub fn build_ring() -> io::Result<(IoUring, &'static str)> {
    let attempts: [(&str, Flags); 4] = [
        ("single_issuer+defer_taskrun+coop_taskrun", |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_coop_taskrun();
        }),
        ("single_issuer+defer_taskrun", |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        }),
        ("coop_taskrun", |b| {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }),
        ("plain", |_| {}),
    ];
    let mut last_error = None;
    for (name, flags) in attempts {
        for cq in CQ_ENTRIES {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cq).setup_submit_all();
            flags(&mut builder);
            match builder.build(SQ_ENTRIES) {
                Ok(ring) => return Ok((ring, name)),
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => last_error = Some(e),
                Err(e) => {
                    last_error = Some(e);
                    break; // these flags are refused whatever the size
                }
            }
        }
    }
    Err(last_error.expect("at least one attempt"))
}

/// One io_uring capability the engine relies on.
struct Need {
    /// The opcode, checked with `IORING_REGISTER_PROBE`.
    opcode: u8,
    /// What the engine uses it for, for the error message.
    what: &'static str,
    /// The kernel release that brought what the engine uses, as (major,
    /// minor): some flags (multishot receive, cancel by fixed file,
    /// `IORING_FILE_INDEX_ALLOC`) cannot be probed, only dated.
    since: (u32, u32),
}

const NEEDS: [Need; 8] = [
    Need {
        opcode: io_uring::opcode::Accept::CODE,
        what: "accept into a fixed-file slot (IORING_FILE_INDEX_ALLOC)",
        since: (5, 19),
    },
    Need {
        opcode: io_uring::opcode::RecvMulti::CODE,
        what: "multishot receive (IORING_RECV_MULTISHOT)",
        since: (6, 0),
    },
    Need {
        opcode: io_uring::opcode::AsyncCancel::CODE,
        what: "cancel by fixed file (IORING_ASYNC_CANCEL_FD_FIXED)",
        since: (6, 0),
    },
    Need {
        opcode: io_uring::opcode::Send::CODE,
        what: "send",
        since: (5, 6),
    },
    Need {
        opcode: io_uring::opcode::SendMsg::CODE,
        what: "sendmsg",
        since: (5, 3),
    },
    Need {
        opcode: io_uring::opcode::Shutdown::CODE,
        what: "shutdown",
        since: (5, 11),
    },
    Need {
        opcode: io_uring::opcode::Close::CODE,
        what: "close of a fixed-file slot",
        since: (5, 15),
    },
    Need {
        opcode: io_uring::opcode::Read::CODE,
        what: "read (worker wake-up)",
        since: (5, 6),
    },
];

/// The running kernel's (major, minor) release, from `uname(2)`.
fn kernel_release() -> Option<(u32, u32)> {
    // SAFETY: utsname is plain data, and uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid utsname to write.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates the release field.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy();
    parse_release(&release)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Checks that the kernel has every io_uring operation and flag the engine
/// needs: opcodes by `IORING_REGISTER_PROBE`, flags by kernel release.
///
/// # Errors
/// `Unsupported`, one line naming what is missing and the Linux release
/// that has it (6.0 for everything), e.g. "io_uring on Linux 5.15 lacks
/// multishot receive (IORING_RECV_MULTISHOT, Linux 6.0+), ...; ringcast
/// needs Linux 6.0 or later". The error of `IORING_REGISTER_PROBE`
/// itself (kernels before 5.6).
pub fn probe(ring: &IoUring) -> io::Result<()> {
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| io::Error::new(e.kind(), format!("probing io_uring opcodes: {e}")))?;
    let release = kernel_release();
    let missing: Vec<String> = NEEDS
        .iter()
        .filter(|n| !probe.is_supported(n.opcode) || release.is_some_and(|r| r < n.since))
        .map(|n| format!("{} (Linux {}.{}+)", n.what, n.since.0, n.since.1))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let kernel = release.map_or_else(
        || "this kernel".to_owned(),
        |(a, b)| format!("Linux {a}.{b}"),
    );
    let newest = NEEDS.iter().map(|n| n.since).max().expect("needs");
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "io_uring on {kernel} lacks {}; ringcast needs Linux {}.{} or later",
            missing.join(", "),
            newest.0,
            newest.1
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(
            parse_release("5.15.167.4-microsoft-standard"),
            Some((5, 15))
        );
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn this_kernel_passes_the_probe() {
        let (ring, _) = build_ring().unwrap();
        probe(&ring).unwrap();
    }
}
