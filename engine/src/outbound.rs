//! A connection's send queue: encoded frames waiting for the socket,
//! bounded in bytes, with the frames the kernel is reading kept alive by
//! construction.
//!
//! Frames are reference-counted [`Bytes`]: a broadcast frame is encoded
//! once per worker and shared by every subscriber's queue. Everything
//! queued for a connection in one loop iteration leaves in one SQE (writes
//! are corked per iteration): one frame as an `IORING_OP_SEND` straight
//! from the frame's bytes, several (up to [`MAX_IOV`]) as one
//! `IORING_OP_SENDMSG`.
//!
//! # The in-flight invariant
//! [`Outbound::start_send`] hands the kernel pointers into the first
//! `n` frames (and, for several frames, into the queue's own `msghdr`) and
//! records `n`. Until [`Outbound::sent`] or [`Outbound::abandon_send`]
//! reports the completion:
//! - [`Outbound::drop_unsent`] (slow-consumer close) drops only frames
//!   behind those `n`;
//! - no other send can start;
//! - the queue storage cannot go back to the [`QueuePool`] or be freed:
//!   [`Outbound::recycle`] and `Drop` assert that nothing is in flight.
//!
//! The queue storage comes from a per-worker [`QueuePool`], so a delivery
//! in steady state allocates nothing; an idle connection's queue is one
//! null pointer (8 bytes).

use bytes::Bytes;
use std::collections::VecDeque;

/// Most frames gathered into one `sendmsg`.
pub const MAX_IOV: usize = 16;

/// Frames a pooled queue keeps room for; a queue that grew past this
/// (a slow reader) gives the extra memory back before it is pooled.
const POOLED_FRAMES: usize = 8;

/// A queue's storage. It lives in a [`QueuePool`] while unused.
pub struct Queue {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Bytes in `frames` not yet written.
    pending: usize,
    /// Front frames the send in flight points into (0: no send in flight).
    in_flight: usize,
    iov: [libc::iovec; MAX_IOV],
    msg: libc::msghdr,
}

impl Queue {
    fn new() -> Box<Self> {
        Box::new(Self {
            frames: VecDeque::with_capacity(POOLED_FRAMES),
            front_written: 0,
            pending: 0,
            in_flight: 0,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV],
            // SAFETY: msghdr is plain data; all-zero is a valid empty value.
            msg: unsafe { std::mem::zeroed() },
        })
    }
}

/// One worker's spare queues. It keeps as many as were in use at the
/// peak of the last [`QueuePool::trim`] period, so a repeated fan-out
/// allocates nothing, and memory goes back once the load has passed.
#[derive(Default)]
pub struct QueuePool {
    /// Boxed, because a connection's [`Outbound`] holds its queue by
    /// pointer: handing one out or back moves 8 bytes and allocates nothing.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Queue>>,
    /// Queues handed out and not yet given back.
    in_use: usize,
    /// Most queues in use at once since the last trim.
    peak: usize,
}

impl QueuePool {
    fn take(&mut self) -> Box<Queue> {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        self.free.pop().unwrap_or_else(Queue::new)
    }

    fn give(&mut self, mut queue: Box<Queue>) {
        assert_eq!(queue.in_flight, 0, "a queue in flight cannot be pooled");
        debug_assert!(queue.frames.is_empty());
        queue.front_written = 0;
        queue.pending = 0;
        queue.frames.shrink_to(POOLED_FRAMES);
        self.in_use -= 1;
        if self.in_use + self.free.len() < self.peak {
            self.free.push(queue);
        }
    }

    /// Frees spare queues beyond the peak in use since the last call, and
    /// starts a new period. Called about once a second.
    pub fn trim(&mut self) {
        self.free.truncate(self.peak.saturating_sub(self.in_use));
        self.free.shrink_to_fit();
        self.peak = self.in_use;
    }

    /// Queues in use and spare: `(in_use, spare)`.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (self.in_use, self.free.len())
    }
}

/// The queue would pass its byte limit: the peer reads too slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// What [`Outbound::start_send`] hands the kernel.
#[derive(Debug, Clone, Copy)]
pub enum SendBuf {
    /// One frame's unwritten bytes, for an `IORING_OP_SEND`.
    One {
        /// First unwritten byte.
        ptr: *const u8,
        /// Unwritten bytes.
        len: u32,
    },
    /// Several frames, for an `IORING_OP_SENDMSG`.
    Gather(*const libc::msghdr),
}

/// A connection's outbound queue; 8 bytes while empty.
#[derive(Default)]
pub struct Outbound {
    queue: Option<Box<Queue>>,
}

impl Outbound {
    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.pending)
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.queue.is_none()
    }

    /// Whether a send started by [`Self::start_send`] has not completed.
    pub fn in_flight(&self) -> bool {
        self.queue.as_ref().is_some_and(|q| q.in_flight > 0)
    }

    /// Queues `frame`. A frame is refused when the queue already holds
    /// bytes and would then hold more than `limit` bytes; an empty queue
    /// takes any one frame, so a single large message is never mistaken for
    /// a slow reader.
    ///
    /// # Errors
    /// [`Overflow`] when refused; the queue is unchanged.
    pub fn push(
        &mut self,
        frame: Bytes,
        limit: usize,
        pool: &mut QueuePool,
    ) -> Result<(), Overflow> {
        let pending = self.pending();
        if pending > 0 && pending + frame.len() > limit {
            return Err(Overflow);
        }
        self.push_unbounded(frame, pool);
        Ok(())
    }

    /// Queues `frame` whatever the limit (responses, close frames).
    pub fn push_unbounded(&mut self, frame: Bytes, pool: &mut QueuePool) {
        if frame.is_empty() {
            return;
        }
        let q = self.queue.get_or_insert_with(|| pool.take());
        q.pending += frame.len();
        q.frames.push_back(frame);
    }

    /// Drops every frame that no send in flight points into and that is
    /// not partly written, so the byte stream stays well-formed and the
    /// kernel never reads a freed frame. Returns bytes dropped.
    pub fn drop_unsent(&mut self, pool: &mut QueuePool) -> usize {
        let Some(q) = self.queue.as_mut() else {
            return 0;
        };
        let keep = q.in_flight.max(usize::from(q.front_written > 0));
        let dropped: usize = q.frames.drain(keep..).map(|f| f.len()).sum();
        q.pending -= dropped;
        if q.frames.is_empty() {
            self.recycle(pool);
        }
        dropped
    }

    /// Starts a send of up to [`MAX_IOV`] frames; `None` when the queue is
    /// empty or a send is already in flight. The bytes (and the `msghdr`)
    /// it points to stay valid and unchanged until [`Self::sent`] or
    /// [`Self::abandon_send`] is called for its completion.
    pub fn start_send(&mut self) -> Option<SendBuf> {
        let q = self.queue.as_mut()?;
        if q.in_flight > 0 {
            return None;
        }
        let count = q.frames.len().min(MAX_IOV);
        q.in_flight = count;
        if count == 1 {
            let unwritten = &q.frames[0][q.front_written..];
            let len = u32::try_from(unwritten.len()).expect("frames are under 4 GiB");
            return Some(SendBuf::One {
                ptr: unwritten.as_ptr(),
                len,
            });
        }
        for (i, frame) in q.frames.iter().take(count).enumerate() {
            let skip = if i == 0 { q.front_written } else { 0 };
            q.iov[i] = libc::iovec {
                iov_base: frame[skip..].as_ptr() as *mut libc::c_void,
                iov_len: frame.len() - skip,
            };
        }
        q.msg.msg_iov = q.iov.as_mut_ptr();
        q.msg.msg_iovlen = count;
        Some(SendBuf::Gather(&q.msg))
    }

    /// The send in flight wrote `n` bytes: releases the finished frames
    /// (back to the pool once the queue is empty). Returns how many whole
    /// frames were finished.
    ///
    /// # Panics
    /// If no send is in flight, or `n` is more than it was given: either
    /// is a broken invariant.
    pub fn sent(&mut self, mut n: usize, pool: &mut QueuePool) -> usize {
        let q = self
            .queue
            .as_mut()
            .expect("send completion for an empty queue");
        assert!(q.in_flight > 0, "send completion with no send in flight");
        let given: usize = q
            .frames
            .iter()
            .take(q.in_flight)
            .map(|f| f.len())
            .sum::<usize>()
            - q.front_written;
        assert!(n <= given, "wrote {n} of {given} bytes given to the send");
        q.in_flight = 0;
        q.pending -= n;
        let mut finished = 0;
        while n > 0 {
            let front_left = q.frames[0].len() - q.front_written;
            if n < front_left {
                q.front_written += n;
                break;
            }
            n -= front_left;
            q.frames.pop_front();
            q.front_written = 0;
            finished += 1;
        }
        if q.frames.is_empty() {
            self.recycle(pool);
        }
        finished
    }

    /// The send in flight completed and its result is not used (it failed,
    /// or the worker is stopping): the kernel no longer reads the frames.
    /// They stay queued until [`Self::clear`].
    pub fn abandon_send(&mut self) {
        let q = self
            .queue
            .as_mut()
            .expect("send completion for an empty queue");
        assert!(q.in_flight > 0, "send completion with no send in flight");
        q.in_flight = 0;
    }

    /// Drops every frame and gives the storage back to `pool`. Returns the
    /// bytes dropped.
    ///
    /// # Panics
    /// If a send is in flight.
    pub fn clear(&mut self, pool: &mut QueuePool) -> usize {
        let pending = self.pending();
        if let Some(q) = self.queue.as_mut() {
            assert_eq!(q.in_flight, 0, "clearing a queue the kernel reads");
            q.frames.clear();
        }
        self.recycle(pool);
        pending
    }

    fn recycle(&mut self, pool: &mut QueuePool) {
        if let Some(q) = self.queue.take() {
            pool.give(q);
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // Freeing frames the kernel reads would send freed memory: stop.
        // (While a panic unwinds, the process is going down anyway.)
        if !std::thread::panicking() {
            assert!(
                !self.in_flight(),
                "a send queue was dropped while the kernel reads it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a started send hands the kernel.
    fn handed(buf: SendBuf) -> Vec<u8> {
        // SAFETY: the pointers come from a queue the test does not touch
        // while reading them.
        unsafe {
            match buf {
                SendBuf::One { ptr, len } => std::slice::from_raw_parts(ptr, len as usize).to_vec(),
                SendBuf::Gather(msg) => {
                    let mut all = Vec::new();
                    for i in 0..(*msg).msg_iovlen {
                        let iov = *(*msg).msg_iov.add(i);
                        all.extend_from_slice(std::slice::from_raw_parts(
                            iov.iov_base as *const u8,
                            iov.iov_len,
                        ));
                    }
                    all
                }
            }
        }
    }

    fn frame(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[test]
    fn one_frame_is_a_plain_send_and_partial_writes_resume() {
        let mut pool = QueuePool::default();
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"abc"), 100, &mut pool)
            .unwrap();
        let buf = out.start_send().unwrap();
        assert!(matches!(buf, SendBuf::One { len: 3, .. }));
        assert_eq!(handed(buf), b"abc");
        assert!(out.start_send().is_none(), "one send at a time");
        out.push(Bytes::from_static(b"defg"), 100, &mut pool)
            .unwrap();
        assert_eq!(out.sent(2, &mut pool), 0);
        let buf = out.start_send().unwrap();
        assert!(matches!(buf, SendBuf::Gather(_)));
        assert_eq!(handed(buf), b"cdefg");
        assert_eq!(out.sent(5, &mut pool), 2);
        assert!(out.is_empty());
        assert_eq!(pool.counts(), (0, 1), "the storage went back to the pool");
    }

    #[test]
    fn limit_refuses_only_a_nonempty_queue() {
        let mut pool = QueuePool::default();
        let mut out = Outbound::default();
        out.push(frame(0, 50), 10, &mut pool).unwrap();
        assert_eq!(
            out.push(Bytes::from_static(b"x"), 10, &mut pool),
            Err(Overflow)
        );
        assert_eq!(out.pending(), 50);
        out.clear(&mut pool);
    }

    #[test]
    fn frames_in_flight_survive_overflow_and_completion_accounts_for_them() {
        let mut pool = QueuePool::default();
        let mut out = Outbound::default();
        for i in 0..4 {
            out.push(frame(i, 10), 100, &mut pool).unwrap();
        }
        // All four frames go to the kernel; the test then checks that the
        // last of them is still the same allocation after an overflow.
        let handed_before = handed(out.start_send().unwrap());
        assert_eq!(handed_before.len(), 40);
        let in_flight_frame = {
            let q = out.queue.as_ref().unwrap();
            q.frames[3].as_ptr()
        };
        out.push(frame(9, 10), 100, &mut pool).unwrap();
        // Overflow: the slow-consumer path drops what was never submitted.
        assert_eq!(out.push(frame(7, 90), 100, &mut pool), Err(Overflow));
        assert_eq!(out.drop_unsent(&mut pool), 10, "only the unsubmitted frame");
        assert_eq!(out.pending(), 40);
        {
            let q = out.queue.as_ref().unwrap();
            assert_eq!(q.frames.len(), 4);
            assert_eq!(q.frames[3].as_ptr(), in_flight_frame);
            assert_eq!(q.frames[3][..], [3; 10]);
        }
        // The kernel wrote 25 of the 40 bytes it was given.
        assert_eq!(out.sent(25, &mut pool), 2);
        assert_eq!(out.pending(), 15);
        // Dropping now keeps the partly written frame only.
        assert_eq!(out.drop_unsent(&mut pool), 10);
        assert_eq!(handed(out.start_send().unwrap()), [2; 5]);
        assert_eq!(out.sent(5, &mut pool), 1);
        assert!(out.is_empty());
        assert_eq!(pool.counts().0, 0);
    }

    #[test]
    #[should_panic(expected = "wrote 11 of 10 bytes")]
    fn a_completion_beyond_what_was_given_is_an_invariant_failure() {
        let mut pool = QueuePool::default();
        let mut out = Outbound::default();
        out.push(frame(1, 10), 100, &mut pool).unwrap();
        out.push(frame(2, 10), 100, &mut pool).unwrap();
        // Give the kernel both, then pretend only the first was given.
        out.start_send().unwrap();
        out.queue.as_mut().unwrap().in_flight = 1;
        out.sent(11, &mut pool);
    }

    #[test]
    #[should_panic(expected = "dropped while the kernel reads it")]
    fn dropping_a_queue_in_flight_is_refused() {
        let mut pool = QueuePool::default();
        let mut out = Outbound::default();
        out.push(frame(1, 10), 100, &mut pool).unwrap();
        out.start_send().unwrap();
        drop(out);
    }

    #[test]
    fn the_pool_keeps_the_last_peak_and_then_lets_go() {
        let mut pool = QueuePool::default();
        let mut outs: Vec<Outbound> = (0..100).map(|_| Outbound::default()).collect();
        for out in &mut outs {
            out.push(frame(1, 10), 100, &mut pool).unwrap();
        }
        for out in &mut outs {
            out.clear(&mut pool);
        }
        assert_eq!(pool.counts(), (0, 100));
        // A second burst of the same size allocates nothing.
        for out in &mut outs {
            out.push(frame(1, 10), 100, &mut pool).unwrap();
        }
        assert_eq!(pool.counts(), (100, 0));
        for out in &mut outs {
            out.clear(&mut pool);
        }
        pool.trim();
        assert_eq!(pool.counts(), (0, 100));
        // A quiet period gives the memory back.
        pool.trim();
        assert_eq!(pool.counts(), (0, 0));
    }
}
