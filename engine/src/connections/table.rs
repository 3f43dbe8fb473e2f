//! The connection records of one worker, indexed by fixed-file slot, in
//! memory that follows the connections actually open, not the size of the
//! fixed-file table.
//!
//! Slots are grouped in chunks of [`CHUNK`]. A chunk is allocated when its
//! first connection arrives and freed by [`Table::trim`] once it is empty,
//! so an idle server holds one pointer per chunk (8 bytes per 256 slots):
//! 32 KiB for a 1,048,576-slot table. The kernel hands out the lowest free
//! slots first after a close (`IORING_FILE_INDEX_ALLOC` resumes at the
//! freed index), so open connections stay packed in few chunks. An
//! occupancy bitmap per chunk lets scans (broadcast, drain, shutdown) visit
//! open connections only.
//!
//! The table also numbers publishes for the records' `last_delivery`
//! ([`Table::next_delivery`]), since it alone can reset every record when
//! the 32-bit number wraps.

use crate::conn::Conn;

/// Slots per chunk: 16 KiB of records. Small, because the last chunk is
/// paid for whole: with 7,500 connections on a worker, 1024-slot chunks
/// left 692 slots (44 KiB) unused, 256-slot chunks leave 180 (11 KiB).
pub const CHUNK: usize = 256;

const _: () = assert!(CHUNK * std::mem::size_of::<Option<Conn>>() == 16 * 1024);

const WORDS: usize = CHUNK / 64;

struct Chunk {
    conns: Box<[Option<Conn>]>,
    occupied: [u64; WORDS],
    len: usize,
}

impl Chunk {
    fn new() -> Box<Self> {
        let mut conns = Vec::with_capacity(CHUNK);
        conns.resize_with(CHUNK, || None);
        Box::new(Self {
            conns: conns.into_boxed_slice(),
            occupied: [0; WORDS],
            len: 0,
        })
    }
}

/// Connection records by slot.
pub struct Table {
    chunks: Vec<Option<Box<Chunk>>>,
    len: usize,
    /// Number of the last publish (see [`Table::next_delivery`]).
    delivery: u32,
}

impl Table {
    /// A table for slots `0..capacity`; allocates one pointer per chunk.
    pub fn new(capacity: usize) -> Self {
        let mut chunks = Vec::new();
        chunks.resize_with(capacity.div_ceil(CHUNK), || None);
        Self {
            chunks,
            len: 0,
            delivery: 0,
        }
    }

    /// The number of a new publish, for `Conn::last_delivery`: never 0
    /// (a fresh record's value), and never one a record still holds. When
    /// the 32-bit count wraps, about once every 4 billion publishes, every
    /// record is reset to 0 first.
    pub fn next_delivery(&mut self) -> u32 {
        self.delivery = self.delivery.wrapping_add(1);
        if self.delivery == 0 {
            self.for_each(|_, conn| conn.last_delivery = 0);
            self.delivery = 1;
        }
        self.delivery
    }

    /// Connections in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Puts `conn` in the free `slot`.
    ///
    /// # Panics
    /// If `slot` is occupied or beyond the capacity.
    pub fn insert(&mut self, slot: u32, conn: Conn) {
        let (c, i) = split(slot);
        let chunk = self.chunks[c].get_or_insert_with(Chunk::new);
        assert!(
            chunk.conns[i].is_none(),
            "accept into an occupied slot {slot}"
        );
        chunk.conns[i] = Some(conn);
        chunk.occupied[i / 64] |= 1 << (i % 64);
        chunk.len += 1;
        self.len += 1;
    }

    /// Takes the connection out of `slot`.
    ///
    /// # Panics
    /// If `slot` holds none.
    pub fn remove(&mut self, slot: u32) -> Conn {
        let (c, i) = split(slot);
        let chunk = self.chunks[c].as_mut().expect("remove from an empty slot");
        let conn = chunk.conns[i].take().expect("remove from an empty slot");
        chunk.occupied[i / 64] &= !(1 << (i % 64));
        chunk.len -= 1;
        self.len -= 1;
        conn
    }

    /// The connection in `slot`, if any.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        let (c, i) = split(slot);
        self.chunks.get_mut(c)?.as_mut()?.conns[i].as_mut()
    }

    /// Calls `f` with every connection and its slot, visiting occupied
    /// slots only.
    pub fn for_each(&mut self, mut f: impl FnMut(u32, &mut Conn)) {
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            let Some(chunk) = chunk.as_mut() else {
                continue;
            };
            for w in 0..WORDS {
                let mut bits = chunk.occupied[w];
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let conn = chunk.conns[i].as_mut().expect("occupied slot");
                    f((c * CHUNK + i) as u32, conn);
                }
            }
        }
    }

    /// Frees the chunks that hold no connection. Called about once a
    /// second, so a connection that comes and goes at a chunk's edge does
    /// not allocate and free the chunk each time.
    pub fn trim(&mut self) {
        for chunk in &mut self.chunks {
            if chunk.as_ref().is_some_and(|c| c.len == 0) {
                *chunk = None;
            }
        }
    }

    /// Chunks allocated now (for tests and stats).
    #[cfg(test)]
    pub fn chunks_allocated(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_some()).count()
    }
}

fn split(slot: u32) -> (usize, usize) {
    (slot as usize / CHUNK, slot as usize % CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_follows_connections_and_scans_visit_only_them() {
        let mut t = Table::new(1 << 20);
        assert_eq!(t.chunks_allocated(), 0);
        for slot in [3, 70, 5000, 1_048_575] {
            t.insert(slot, Conn::new(1, 0));
        }
        assert_eq!((t.len(), t.chunks_allocated()), (4, 3));
        let mut seen = Vec::new();
        t.for_each(|slot, _| seen.push(slot));
        assert_eq!(seen, [3, 70, 5000, 1_048_575]);
        t.remove(5000);
        t.remove(1_048_575);
        assert!(t.get_mut(5000).is_none());
        t.trim();
        assert_eq!((t.len(), t.chunks_allocated()), (2, 1));
        assert!(t.get_mut(70).is_some());
    }

    #[test]
    fn a_wrapping_publish_number_never_matches_a_record() {
        let mut t = Table::new(CHUNK);
        t.insert(1, Conn::new(1, 0));
        t.insert(2, Conn::new(1, 0));
        assert_eq!(t.next_delivery(), 1);
        t.delivery = u32::MAX - 1;
        let last = t.next_delivery();
        assert_eq!(last, u32::MAX);
        t.get_mut(1).unwrap().last_delivery = last;
        t.get_mut(2).unwrap().last_delivery = 1;
        assert_eq!(t.next_delivery(), 1);
        for slot in [1, 2] {
            assert_eq!(t.get_mut(slot).unwrap().last_delivery, 0);
        }
    }

    #[test]
    #[should_panic(expected = "occupied slot 7")]
    fn a_slot_holds_one_connection() {
        let mut t = Table::new(CHUNK);
        t.insert(7, Conn::new(1, 0));
        t.insert(7, Conn::new(2, 0));
    }
}
