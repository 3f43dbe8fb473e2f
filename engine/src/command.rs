//! Work handed to a worker from other threads: publishes, broadcasts,
//! user look-ups and disconnections, answers to upstream events (replies,
//! broker reads), drain, rebalance and shutdown. Each worker has a channel
//! and an eventfd; the sender pushes a
//! [`Command`] and writes the eventfd, which completes a read the worker
//! keeps armed on its ring. No lock is taken on the worker's side.

use crate::delivery::{Frames, TopicFrame};
use bytes::Bytes;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A command for one worker.
pub enum Command {
    /// Queue `frames` to every subscriber of any of `topics` and every
    /// connection of any of `users` (once each).
    Publish {
        /// Topic names, already validated.
        topics: Arc<[String]>,
        /// User ids (`sub`).
        users: Arc<[String]>,
        /// The encoded frames, shared by all workers and subscribers.
        frames: Frames,
        /// Each topic's `ringcast.v1` delivery, in the order of `topics`.
        v1: Arc<[TopicFrame]>,
        /// The `ringcast.v1` frames for connections of `users` (an empty
        /// plain frame without users), behind one pointer to keep the
        /// command small.
        direct: Arc<Frames>,
        /// A connection that gets no delivery (a client's own publish with
        /// echo off).
        skip: Option<crate::upstream::Origin>,
        /// Completed with the number of connections queued to.
        ack: Arc<Ack>,
    },
    /// Queue `frames` to every connection on the topics endpoint.
    Broadcast {
        /// The encoded frames.
        frames: Frames,
        /// The `ringcast.v1` broadcast frames.
        v1: Frames,
        /// Completed with the number of connections queued to.
        ack: Arc<Ack>,
    },
    /// Close every open connection of any of `users` with `code` and
    /// `reason`.
    Disconnect {
        /// User ids (`sub`).
        users: Arc<[String]>,
        /// Close code (1000, or 3000–4999).
        code: u16,
        /// Close reason, at most 123 bytes.
        reason: Arc<str>,
        /// Completed with the number of connections being closed.
        ack: Arc<Ack>,
    },
    /// Count the open connections of `user`.
    UserConnections {
        /// User id (`sub`).
        user: Arc<str>,
        /// Completed with this worker's count.
        ack: Arc<Ack>,
    },
    /// Close the listener, close every open connection with 1001 spread
    /// over the first 90% of `period`, and exit once none is left or
    /// `period` has passed. Commands queued before this one (publishes)
    /// are applied first.
    Drain {
        /// The whole drain, in time.
        period: Duration,
    },
    /// Close `fraction` (0.0–1.0) of the open connections, chosen at
    /// random, with 1001 spread evenly over `period`.
    Rebalance {
        /// Share of open connections to close.
        fraction: f64,
        /// Time the closes are spread over.
        period: Duration,
    },
    /// The broker's answer to a worker's [`crate::upstream::Event::Recover`].
    Recovered {
        /// The connection's slot.
        slot: u32,
        /// The connection's generation.
        gen: u32,
        /// The topic subscribed to.
        topic: String,
        /// The topic's position and replay; `None` when the broker could
        /// not be read.
        position: Option<crate::hub::Recovery>,
    },
    /// Send `{"op":"resync","topic":…}` to every `ringcast.v1` subscriber
    /// of any of `topics` (deliveries may have been missed).
    Resync {
        /// Topic names.
        topics: Arc<[String]>,
        /// Completed with the number of hints queued.
        ack: Arc<Ack>,
    },
    /// Queue `frame` to the open connection in `slot` if it is still the
    /// tenant of generation `gen` (the answer to an upstream event; see
    /// [`crate::upstream`]). Dropped silently otherwise.
    Reply {
        /// Fixed-file slot.
        slot: u32,
        /// The tenant's generation.
        gen: u32,
        /// An encoded frame (a `ringcast.v1` reply).
        frame: Bytes,
    },
    /// Finish the handshake parked in `slot` for the connect hook, if it is
    /// still that tenant's and still parked: 101 and open, or 403/503.
    Admit {
        /// Fixed-file slot.
        slot: u32,
        /// The tenant's generation.
        gen: u32,
        /// The hook's answer.
        verdict: crate::upstream::Verdict,
    },
    /// Push a presence join or leave of `topic` to its `join_leave`
    /// subscribers on this worker, except `skip` (a connection does not
    /// get its own join).
    Presence {
        /// The topic.
        topic: Arc<str>,
        /// A join (else a leave): the SSE event's name.
        joined: bool,
        /// The event object (`protocol::presence::event`).
        json: Arc<str>,
        /// The joining connection.
        skip: Option<crate::upstream::Origin>,
    },
    /// Stop accepting, close every connection with 1001 at once, then exit.
    Shutdown,
    /// Panic on the worker thread (tests of the panic policy only).
    #[cfg(feature = "fault-injection")]
    InjectPanic,
}

type Done = Box<dyn FnOnce(usize) + Send>;

/// Collects the per-worker counts of one publish (or user command); calls
/// its callback with their sum once every worker has answered.
pub struct Ack {
    remaining: AtomicUsize,
    delivered: AtomicUsize,
    done: Mutex<Option<Done>>,
}

impl Ack {
    /// An ack expecting `workers` completions.
    pub fn new(workers: usize, done: impl FnOnce(usize) + Send + 'static) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(workers),
            delivered: AtomicUsize::new(0),
            done: Mutex::new(Some(Box::new(done))),
        })
    }

    /// One worker queued the frame to `n` connections.
    pub fn complete(&self, n: usize) {
        self.delivered.fetch_add(n, Ordering::AcqRel);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let done = self.done.lock().expect("ack lock").take();
            if let Some(done) = done {
                done(self.delivered.load(Ordering::Acquire));
            }
        }
    }
}

/// A worker's wake-up: an eventfd whose read the worker keeps armed, and
/// a flag that coalesces wake-ups. Only the sender that finds the flag
/// clear writes the eventfd; the worker clears it before it reads the
/// channel. A burst of publishes to one worker is then one `write(2)` and
/// one wake-up, not one per publish.
pub struct Wake {
    /// The eventfd (non-blocking, close-on-exec).
    pub fd: OwnedFd,
    /// Set while a wake-up is on its way and not yet handled.
    pub pending: AtomicBool,
}

impl Wake {
    /// A new eventfd.
    ///
    /// # Errors
    /// `eventfd(2)` errors (e.g. `EMFILE`).
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd returns a new descriptor we then own.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `raw` is a valid descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            pending: AtomicBool::new(false),
        })
    }
}

/// A command could not be sent: its worker has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerExited;

/// The sending side of one worker's mailbox.
pub struct Mailbox {
    pub(crate) tx: Sender<Command>,
    pub(crate) wake: Arc<Wake>,
}

impl Mailbox {
    /// Sends `command` and wakes the worker unless a wake-up is already on
    /// its way.
    ///
    /// # Errors
    /// [`WorkerExited`] if the worker has exited (the command is dropped).
    pub fn send(&self, command: Command) -> Result<(), WorkerExited> {
        self.tx.send(command).map_err(|_| WorkerExited)?;
        if !self.wake.pending.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            // A failed write (counter saturated) still leaves the worker
            // woken.
            unsafe { libc::write(self.wake.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        Ok(())
    }
}
