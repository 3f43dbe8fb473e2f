//! Work handed to a worker from other threads: publishes, broadcasts,
//! drain, rebalance and shutdown. Each worker has a channel and an eventfd; the sender pushes a
//! [`Command`] and writes the eventfd, which completes a read the worker
//! keeps armed on its ring. No lock is taken on the worker's side.

use bytes::Bytes;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A command for one worker.
pub enum Command {
    /// Queue `frame` to every subscriber of any of `topics` (once each).
    Publish {
        /// Topic names, already validated.
        topics: Arc<[String]>,
        /// The encoded frame, shared by all workers and subscribers.
        frame: Bytes,
        /// Completed with the number of connections queued to.
        ack: Arc<Ack>,
    },
    /// Queue `frame` to every connection on the topics endpoint.
    Broadcast {
        /// The encoded frame.
        frame: Bytes,
        /// Completed with the number of connections queued to.
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
    /// Stop accepting, close every connection with 1001 at once, then exit.
    Shutdown,
}

type Done = Box<dyn FnOnce(usize) + Send>;

/// Collects the per-worker counts of one publish; calls its callback once
/// every worker has queued the frame.
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

/// The sending side of one worker's mailbox.
pub struct Mailbox {
    pub(crate) tx: Sender<Command>,
    pub(crate) wake: Arc<OwnedFd>,
}

impl Mailbox {
    /// Sends `command` and wakes the worker. Returns the command back if the
    /// worker has exited.
    pub fn send(&self, command: Command) -> Result<(), Command> {
        self.tx.send(command).map_err(|e| e.0)?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A
        // failed write (counter saturated) still leaves the worker woken.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        Ok(())
    }
}
