//! A provided buffer ring (IORING_REGISTER_PBUF_RING): one pool of receive
//! buffers per worker, shared by every connection's multishot receive. The
//! kernel picks a buffer only when data arrives, so an idle connection holds
//! no read buffer.
//!
//! Where the kernel supports it (6.12+), the ring is registered for
//! incremental consumption (IOU_PBUF_RING_INC). A receive then takes only
//! the bytes it needs from the current buffer, and the same buffer id comes
//! back in several CQEs, each starting where the previous one stopped. The
//! buffer is finished when a CQE lacks IORING_CQE_F_BUF_MORE. Without it,
//! every receive uses up a whole buffer.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// Anonymous private mapping, unmapped on drop. With `populate`, its pages
/// are backed at once (MAP_POPULATE); otherwise only once touched.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, populate: bool) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | if populate { libc::MAP_POPULATE } else { 0 },
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The buffer group id; one group per ring.
pub const BUFFER_GROUP: u16 = 0;

/// `IOU_PBUF_RING_INC` from `<linux/io_uring.h>`.
const IOU_PBUF_RING_INC: u16 = 2;

/// A registered ring of `count` buffers of `size` bytes each.
pub struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    size: u32,
    /// Next tail value, published to the kernel by [`BufRing::publish`].
    tail: u16,
    /// Per buffer: bytes already handed out by earlier CQEs (incremental
    /// consumption only; always 0 otherwise).
    offsets: Vec<u32>,
    incremental: bool,
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes, registers them with `ring`
    /// as [`BUFFER_GROUP`] and hands all of them to the kernel.
    ///
    /// # Errors
    /// `InvalidInput` if `count` is not a power of two in 1..=32768 or `size`
    /// is 0; `mmap(2)` errors; `io_uring_register(2)` errors (`EINVAL` on
    /// kernels before 5.19).
    pub fn register(ring: &IoUring, count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768, size above 0",
            ));
        }
        let entries = Mapping::new(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            false,
        )?;
        // Populated up front: the kernel would otherwise fault pages in
        // while copying received bytes, and RSS would creep up with the
        // first few thousand connections instead of showing the pool's
        // fixed cost from the start.
        let buffers = Mapping::new(usize::from(count) * size as usize, true)?;
        let register = |flags| {
            // SAFETY: the mapping is page aligned, sized for `count` entries
            // and lives until after the ring is unregistered (drop order in
            // Worker: the ring is dropped before this BufRing).
            unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    entries.ptr.as_ptr() as u64,
                    count,
                    BUFFER_GROUP,
                    flags,
                )
            }
        };
        let incremental = match register(IOU_PBUF_RING_INC) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                register(0)?;
                false
            }
            Err(e) => return Err(e),
        };
        let mut this = Self {
            entries,
            buffers,
            count,
            size,
            tail: 0,
            offsets: vec![0; usize::from(count)],
            incremental,
        };
        for bid in 0..count {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    fn entry(&mut self, index: u16) -> &mut BufRingEntry {
        let i = usize::from(index & (self.count - 1));
        // SAFETY: `i < count` and the mapping holds `count` entries.
        unsafe { &mut *self.entries.ptr.as_ptr().cast::<BufRingEntry>().add(i) }
    }

    /// Queues buffer `bid` for the kernel; visible after [`Self::publish`].
    fn push(&mut self, bid: u16) {
        let addr = self.buffers.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        let (tail, size) = (self.tail, self.size);
        let entry = self.entry(tail);
        entry.set_addr(addr);
        entry.set_len(size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer available to the kernel.
    fn publish(&mut self) {
        // SAFETY: the base is the first entry of a registered ring; the tail
        // field aliases its reserved bytes and is only written by us.
        let tail = unsafe {
            &*BufRingEntry::tail(self.entries.ptr.as_ptr().cast::<BufRingEntry>())
                .cast::<AtomicU16>()
        };
        tail.store(self.tail, Ordering::Release);
    }

    /// Whether the ring was registered for incremental consumption.
    pub fn is_incremental(&self) -> bool {
        self.incremental
    }

    /// The `len` bytes a receive CQE reported in buffer `bid`.
    ///
    /// # Safety
    /// `bid` and `len` must come from one receive CQE, which must then be
    /// passed to [`Self::consumed`] before the next CQE's bytes are taken.
    pub unsafe fn filled(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let offset = self.offsets[usize::from(bid)] as usize;
        assert!(
            bid < self.count && offset + len <= self.size as usize,
            "CQE beyond its buffer"
        );
        let start = self
            .buffers
            .ptr
            .as_ptr()
            .add(usize::from(bid) * self.size as usize + offset);
        std::slice::from_raw_parts_mut(start, len)
    }

    /// Records that the `len` bytes of a CQE in buffer `bid` are consumed.
    /// `more` is the CQE's IORING_CQE_F_BUF_MORE: the kernel keeps filling
    /// the rest of the buffer. Otherwise the buffer goes back to the kernel.
    pub fn consumed(&mut self, bid: u16, len: usize, more: bool) {
        let offset = &mut self.offsets[usize::from(bid)];
        if more {
            debug_assert!(self.incremental);
            *offset += len as u32;
        } else {
            *offset = 0;
            self.push(bid);
            self.publish();
        }
    }
}
