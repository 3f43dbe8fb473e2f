//! Accepts: up to [`ACCEPTS`] single-shot `IORING_OP_ACCEPT`s armed at
//! once, each with its own address buffer (a multishot accept reports no
//! peer address), straight into free fixed-file slots
//! (`IORING_FILE_INDEX_ALLOC`). No more are armed than there are free
//! slots and accept-rate tokens, so a full table or an exceeded rate
//! leaves connections waiting in the listen backlog rather than refused.
//!
//! A failed accept (`ENFILE` at fs.file-max, `ENOMEM`, `EMFILE`, ...) is
//! not re-armed at once: the worker backs off from 10 ms, doubling up to
//! 1 s, and logs at most one line a second with the count.

use super::Worker;
use crate::ring::token::Token;
use io_uring::opcode;
use io_uring::types::{DestinationSlot, Fd};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Accepts armed at once per worker. Each completes with one connection;
/// the loop re-arms them in the same batch as everything else.
pub const ACCEPTS: usize = 32;

/// First wait after a failed accept; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Longest wait after failed accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Where one armed accept writes its peer's address.
#[derive(Clone, Copy)]
pub(super) struct AcceptAddr {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// The peer address an accept wrote, if IPv4 or IPv6.
fn peer_ip(a: &AcceptAddr) -> Option<IpAddr> {
    let storage = &a.addr as *const libc::sockaddr_storage;
    // SAFETY: the kernel wrote a sockaddr of `len` bytes for the family it
    // names; each cast reads only a type that family guarantees.
    let addr = unsafe {
        match i32::from(a.addr.ss_family) {
            libc::AF_INET => {
                let v4 = &*storage.cast::<libc::sockaddr_in>();
                SocketAddr::from((u32::from_be(v4.sin_addr.s_addr).to_be_bytes(), 0))
            }
            libc::AF_INET6 => {
                let v6 = &*storage.cast::<libc::sockaddr_in6>();
                SocketAddr::from((v6.sin6_addr.s6_addr, 0))
            }
            _ => return None,
        }
    };
    Some(addr.ip().to_canonical())
}

/// The accept side of a worker: address buffers, which are armed, and the
/// back-off after failures.
pub(super) struct Accepts {
    addrs: Box<[AcceptAddr; ACCEPTS]>,
    /// Indexes into `addrs` with no accept armed.
    idle: Vec<u8>,
    /// No accept is armed before this time (after failures).
    paused_until: Option<Instant>,
    /// Wait after the next failure.
    backoff: Duration,
    /// Failures not yet logged, and when the last log line was written.
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl Accepts {
    pub fn new() -> Self {
        Self {
            // SAFETY: sockaddr_storage is plain data; zero is a valid value.
            addrs: Box::new(unsafe { std::mem::zeroed() }),
            idle: (0..ACCEPTS as u8).rev().collect(),
            paused_until: None,
            backoff: FIRST_BACKOFF,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// The accept armed with address buffer `index` completed; returns
    /// the peer address it wrote.
    pub fn completed(&mut self, index: u32) -> Option<IpAddr> {
        let index = u8::try_from(index).expect("accept index");
        self.idle.push(index);
        peer_ip(&self.addrs[usize::from(index)])
    }

    /// Accepts armed now.
    pub fn armed(&self) -> u32 {
        (ACCEPTS - self.idle.len()) as u32
    }

    /// When the back-off ends, for the loop's wait.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Counts a failed accept with `errno`, backs off, and logs at most
    /// once a second.
    fn failed(&mut self, errno: i32) {
        let now = Instant::now();
        self.paused_until = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.unlogged += 1;
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::warn!(
                failures = self.unlogged,
                retry_in_ms = self
                    .paused_until
                    .map_or(0, |t| (t - now).as_millis() as u64),
                "accept failed: {}",
                io::Error::from_raw_os_error(errno)
            );
            self.unlogged = 0;
            self.logged_at = Some(now);
        }
    }

    fn succeeded(&mut self) {
        self.backoff = FIRST_BACKOFF;
    }
}

impl Worker {
    /// Arms accepts up to [`ACCEPTS`], the free fixed-file slots and the
    /// accept-rate tokens, unless the listener is closed, the worker is
    /// stopping, or it backs off after failed accepts. Connections beyond
    /// those wait in the listen backlog.
    pub(super) fn arm_accepts(&mut self) {
        let Some(listener) = self.listener.as_ref().map(|l| Fd(l.as_raw_fd())) else {
            return; // closed by a drain or shutdown
        };
        if let Some(until) = self.accepts.paused_until {
            if Instant::now() < until {
                return;
            }
            self.accepts.paused_until = None;
        }
        let free = self.capacity - self.slots_in_use - self.accepts.armed();
        let mut allowed = free.min(self.accepts.idle.len() as u32);
        if allowed > 0 {
            allowed = allowed.min(self.accept_rate.available());
        }
        for _ in 0..allowed {
            let index = self.accepts.idle.pop().expect("an idle accept");
            let a = &mut self.accepts.addrs[usize::from(index)];
            a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let entry = opcode::Accept::new(listener, (&raw mut a.addr).cast(), &raw mut a.len)
                .file_index(Some(DestinationSlot::auto_target()))
                .build()
                .user_data(Token::accept(u32::from(index)).encode());
            self.accept_rate.take();
            self.push(entry);
        }
    }

    /// An accept armed with address buffer `index` completed.
    pub(super) fn on_accept(&mut self, index: u32, result: i32) {
        let ip = self.accepts.completed(index);
        if result >= 0 {
            self.accepts.succeeded();
            let slot = result as u32;
            self.slot_taken();
            // One that raced a drain's cancel is answered 503 at its
            // handshake.
            let gen = self.conns.accept(slot, ip);
            self.arm_recv(slot, gen);
        } else if -result != libc::ECANCELED {
            self.accepts.failed(-result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accepts_back_off_doubling_to_a_cap_and_success_resets() {
        let mut a = Accepts::new();
        let mut waits = Vec::new();
        for _ in 0..10 {
            let before = Instant::now();
            a.failed(libc::ENFILE);
            waits.push(a.paused_until().unwrap() - before);
        }
        assert!(waits[0] >= FIRST_BACKOFF && waits[0] < FIRST_BACKOFF * 2);
        assert!(waits[1] >= FIRST_BACKOFF * 2);
        assert!(waits
            .windows(2)
            .all(|w| w[1] + Duration::from_millis(1) >= w[0]));
        assert!(waits[9] <= MAX_BACKOFF + Duration::from_millis(5));
        assert!(waits[9] >= MAX_BACKOFF);
        // Ten failures within a second make one log line; the rest wait.
        assert_eq!(a.unlogged, 9);
        a.succeeded();
        let before = Instant::now();
        a.failed(libc::ENOMEM);
        assert!(a.paused_until().unwrap() - before < FIRST_BACKOFF * 2);
    }
}
