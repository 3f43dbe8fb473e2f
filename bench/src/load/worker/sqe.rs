//! The worker's submissions: `user_data` tokens, socket addresses as the
//! kernel reads them, and queueing an SQE.

use io_uring::{squeue, IoUring};
use std::io;
use std::net::SocketAddr;

/// `user_data` layout: op in bits 56–63, generation in 48–55, aux (owned
/// send buffer key + 1, or 0) in 32–47, fixed-file slot in 0–31.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    Socket = 1,
    Bind = 2,
    Connect = 3,
    Send = 4,
    Recv = 5,
    Cancel = 6,
    Close = 7,
}

pub(super) fn token(op: Op, gen: u8, aux: u16, slot: u32) -> u64 {
    (op as u64) << 56 | u64::from(gen) << 48 | u64::from(aux) << 32 | u64::from(slot)
}

pub(super) fn untoken(user_data: u64) -> (Op, u8, u16, u32) {
    let op = match (user_data >> 56) as u8 {
        1 => Op::Socket,
        2 => Op::Bind,
        3 => Op::Connect,
        4 => Op::Send,
        5 => Op::Recv,
        6 => Op::Cancel,
        7 => Op::Close,
        other => panic!("CQE with an unknown op {other}"),
    };
    (
        op,
        (user_data >> 48) as u8,
        (user_data >> 32) as u16,
        user_data as u32,
    )
}

/// A socket address in the form the kernel reads.
#[derive(Clone, Copy)]
pub(super) struct RawAddr {
    storage: libc::sockaddr_storage,
    pub(super) len: libc::socklen_t,
}

impl RawAddr {
    pub(super) fn new(addr: SocketAddr) -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for
                // sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub(super) fn ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }
}

/// `"Connection refused (os error 111)"` for a negative CQE result.
pub(super) fn errno_text(result: i32) -> String {
    io::Error::from_raw_os_error(-result).to_string()
}

/// Queues an SQE, submitting first if the submission queue is full.
pub(super) fn push(ring: &mut IoUring, entry: squeue::Entry) {
    loop {
        // SAFETY: every buffer and address an SQE points to lives in the
        // worker (request, frames, addresses) or in `Clients::owned` until
        // its CQE arrives.
        if unsafe { ring.submission().push(&entry) }.is_ok() {
            return;
        }
        if let Err(e) = ring.submit() {
            assert!(
                matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)),
                "io_uring submit with a full SQ: {e}"
            );
        }
    }
}
