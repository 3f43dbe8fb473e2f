//! A connection's send queue: encoded frames waiting for the socket,
//! bounded in bytes.
//!
//! Frames are reference-counted [`Bytes`]: a broadcast frame is encoded
//! once and shared by every subscriber's queue. Up to [`MAX_IOV`] queued
//! frames go out in one `sendmsg`, so everything queued for a connection in
//! one loop iteration leaves in one SQE (writes are corked per iteration).
//! The queue allocates only while it holds frames.

use bytes::Bytes;
use std::collections::VecDeque;

/// Most frames gathered into one `sendmsg`.
pub const MAX_IOV: usize = 16;

struct Queue {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Bytes in `frames` not yet written.
    pending: usize,
    iov: [libc::iovec; MAX_IOV],
    msg: libc::msghdr,
}

/// The queue would pass its byte limit: the peer reads too slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

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

    /// Queues `frame`. A frame is refused when the queue already holds
    /// bytes and would then hold more than `limit` bytes; an empty queue
    /// takes any one frame, so a single large message is never mistaken for
    /// a slow reader.
    ///
    /// # Errors
    /// [`Overflow`] when refused; the queue is unchanged.
    pub fn push(&mut self, frame: Bytes, limit: usize) -> Result<(), Overflow> {
        let pending = self.pending();
        if pending > 0 && pending + frame.len() > limit {
            return Err(Overflow);
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Queues `frame` whatever the limit (the final close frame).
    pub fn push_unbounded(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        let q = self.queue.get_or_insert_with(|| {
            Box::new(Queue {
                frames: VecDeque::new(),
                front_written: 0,
                pending: 0,
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV],
                // SAFETY: msghdr is plain data; all-zero is a valid empty value.
                msg: unsafe { std::mem::zeroed() },
            })
        });
        q.pending += frame.len();
        q.frames.push_back(frame);
    }

    /// Drops every frame not yet started, keeping a partly written front
    /// frame so the byte stream stays well-formed. Returns bytes dropped.
    pub fn drop_unsent(&mut self) -> usize {
        let Some(q) = self.queue.as_mut() else {
            return 0;
        };
        let keep = usize::from(q.front_written > 0);
        let dropped: usize = q.frames.drain(keep..).map(|f| f.len()).sum();
        q.pending -= dropped;
        if q.frames.is_empty() {
            self.queue = None;
        }
        dropped
    }

    /// Fills the queue's `msghdr` with up to [`MAX_IOV`] pending frames and
    /// returns a pointer to it for an IORING_OP_SENDMSG, or `None` when
    /// empty. The pointer, and the frames it points into, stay valid until
    /// [`Self::written`] is called for the completion: the queue is boxed
    /// and is neither freed nor refilled while a send is in flight.
    pub fn prepare_send(&mut self) -> Option<*const libc::msghdr> {
        let q = self.queue.as_mut()?;
        let mut count = 0;
        for (i, frame) in q.frames.iter().take(MAX_IOV).enumerate() {
            let skip = if i == 0 { q.front_written } else { 0 };
            q.iov[i] = libc::iovec {
                iov_base: frame[skip..].as_ptr() as *mut libc::c_void,
                iov_len: frame.len() - skip,
            };
            count += 1;
        }
        q.msg.msg_iov = q.iov.as_mut_ptr();
        q.msg.msg_iovlen = count;
        Some(&q.msg)
    }

    /// Records that a send wrote `n` bytes, releasing finished frames.
    /// Returns how many whole frames were finished.
    pub fn written(&mut self, mut n: usize) -> usize {
        let Some(q) = self.queue.as_mut() else {
            assert_eq!(n, 0, "wrote bytes from an empty queue");
            return 0;
        };
        assert!(n <= q.pending, "wrote more than was queued");
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
            self.queue = None;
        }
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(out: &mut Outbound) -> Vec<u8> {
        let msg = out.prepare_send().unwrap();
        let mut all = Vec::new();
        // SAFETY: the pointers come from the queue, which is not touched.
        unsafe {
            for i in 0..(*msg).msg_iovlen {
                let iov = *(*msg).msg_iov.add(i);
                all.extend_from_slice(std::slice::from_raw_parts(
                    iov.iov_base as *const u8,
                    iov.iov_len,
                ));
            }
        }
        all
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"abc"), 100).unwrap();
        out.push(Bytes::from_static(b"defg"), 100).unwrap();
        assert_eq!(gathered(&mut out), b"abcdefg");
        assert_eq!(out.written(4), 1);
        assert_eq!(gathered(&mut out), b"efg");
        assert_eq!(out.written(3), 1);
        assert!(out.is_empty());
    }

    #[test]
    fn limit_refuses_only_a_nonempty_queue() {
        let mut out = Outbound::default();
        out.push(Bytes::from(vec![0; 50]), 10).unwrap();
        assert_eq!(out.push(Bytes::from_static(b"x"), 10), Err(Overflow));
        assert_eq!(out.pending(), 50);
    }

    #[test]
    fn drop_unsent_keeps_a_started_frame() {
        let mut out = Outbound::default();
        for _ in 0..3 {
            out.push(Bytes::from_static(b"abcd"), 100).unwrap();
        }
        out.written(2);
        assert_eq!(out.drop_unsent(), 8);
        assert_eq!(gathered(&mut out), b"cd");
    }
}
