//! Ring construction with the best setup flags the kernel accepts.

use io_uring::IoUring;
use std::io;

/// Submission queue entries per ring.
pub const SQ_ENTRIES: u32 = 4096;

/// Completion queue entries per ring: room for a burst of multishot
/// receives and fan-out sends between two loop iterations.
pub const CQ_ENTRIES: u32 = 65536;

/// Adds setup flags to a ring builder.
type Flags = fn(&mut io_uring::Builder);

/// Builds a ring for one worker thread, trying in order:
/// SINGLE_ISSUER + DEFER_TASKRUN + COOP_TASKRUN (completions run only when
/// this thread waits, no interrupts), the same without COOP_TASKRUN, then
/// COOP_TASKRUN alone, then no flags. Returns the ring
/// and a name for the setup chosen, for the startup log.
///
/// # Errors
/// The last `io_uring_setup(2)` error if no setup works (e.g. io_uring is
/// disabled by `kernel.io_uring_disabled`, or `ENOMEM` under a low
/// `RLIMIT_MEMLOCK` on kernels before 5.12).
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
        let mut builder = IoUring::builder();
        builder.setup_cqsize(CQ_ENTRIES).setup_submit_all();
        flags(&mut builder);
        match builder.build(SQ_ENTRIES) {
            Ok(ring) => return Ok((ring, name)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.expect("at least one attempt"))
}
