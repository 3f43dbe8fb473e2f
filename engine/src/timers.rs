//! A hashed timer wheel of connection deadlines (handshake timeout, ping,
//! idle timeout, close timeout).
//!
//! Each connection has one live entry. When it fires, the connection
//! decides what is due from its own timestamps and schedules its next
//! entry; activity never touches the wheel. An entry whose connection has
//! since been rescheduled or replaced is stale and skipped: the connection
//! records the tick of its live entry, and entries carry the generation.

use std::time::{Duration, Instant};

/// Wheel resolution: timeouts fire up to one tick late.
pub const TICK: Duration = Duration::from_millis(100);

/// Slots in the wheel: deadlines further out than this many ticks
/// (409.6 s) fire early and are rescheduled.
const SLOTS: usize = 4096;

/// Time in ticks since the wheel started.
pub type Tick = u32;

/// A deadline that never comes (about 13.6 years of ticks away).
pub const NEVER: Tick = Tick::MAX;

/// One scheduled deadline: the connection's slot and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Fixed-file slot of the connection.
    pub slot: u32,
    /// Its generation when scheduled.
    pub gen: u32,
}

/// Entries per storage block: a block is 512 bytes.
const BLOCK: usize = 63;

/// No block (end of a slot's list).
const NIL: u32 = u32::MAX;

/// A slot's entries live in a list of blocks taken from the wheel's free
/// list; a fired slot gives its blocks back. Scheduling and firing
/// therefore allocate nothing once the wheel has held as many entries as
/// it holds now, and no slot keeps memory for the busiest lap it has seen.
struct Block {
    entries: [Entry; BLOCK],
    len: u32,
    next: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 8);
const _: () = assert!(std::mem::size_of::<Block>() == 512);

/// The wheel: 8 bytes per scheduled entry, in 512-byte blocks (at most one
/// partly filled block per slot with entries), plus 4 bytes per slot and
/// 8 per block. Blocks freed by firing are kept for reuse: the wheel holds
/// memory for the most entries it has held at once (one per connection).
pub struct Wheel {
    start: Instant,
    /// Each slot's first block, or [`NIL`].
    slots: Vec<u32>,
    /// Each block allocated on its own, so growing never copies them: a
    /// `Vec<Block>` doubling to 128 blocks (7,500 connections) freed 63 KiB
    /// of earlier copies that the allocator may keep resident.
    #[allow(clippy::vec_box)]
    blocks: Vec<Box<Block>>,
    /// Free blocks, linked through `next`.
    free: u32,
    /// Next tick to fire.
    next: Tick,
}

impl Wheel {
    /// An empty wheel starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            slots: vec![NIL; SLOTS],
            blocks: Vec::new(),
            free: NIL,
            next: 0,
        }
    }

    /// The current tick.
    pub fn now(&self) -> Tick {
        (self.start.elapsed().as_millis() / TICK.as_millis()) as Tick
    }

    /// Converts a duration to ticks, rounding up, at least 1.
    pub fn ticks(d: Duration) -> Tick {
        (d.as_millis().div_ceil(TICK.as_millis()).max(1)).min(Tick::MAX as u128) as Tick
    }

    /// Schedules `entry` at tick `at` (clamped to the wheel's span) and
    /// returns the tick it will really fire at; the connection stores it.
    pub fn schedule(&mut self, entry: Entry, at: Tick) -> Tick {
        let at = at.clamp(self.next, self.next + SLOTS as Tick - 1);
        let slot = at as usize % SLOTS;
        let head = self.slots[slot];
        if head == NIL || self.blocks[head as usize].len as usize == BLOCK {
            let block = self.take_block();
            self.blocks[block as usize].next = head;
            self.slots[slot] = block;
        }
        let block = &mut self.blocks[self.slots[slot] as usize];
        block.entries[block.len as usize] = entry;
        block.len += 1;
        at
    }

    fn take_block(&mut self) -> u32 {
        if self.free == NIL {
            self.blocks.push(Box::new(Block {
                entries: [Entry { slot: 0, gen: 0 }; BLOCK],
                len: 0,
                next: NIL,
            }));
            return (self.blocks.len() - 1) as u32;
        }
        let block = self.free;
        self.free = self.blocks[block as usize].next;
        self.blocks[block as usize].len = 0;
        block
    }

    /// Time until the next tick is due, for the ring wait.
    pub fn until_next_tick(&self) -> Duration {
        let due = TICK * self.next;
        due.saturating_sub(self.start.elapsed())
    }

    /// Moves every entry due by now into `due`, with the tick it fired at.
    pub fn expire(&mut self, due: &mut Vec<(Entry, Tick)>) {
        let now = self.now();
        while self.next <= now {
            let tick = self.next;
            let slot = tick as usize % SLOTS;
            let mut block = std::mem::replace(&mut self.slots[slot], NIL);
            while block != NIL {
                let b = &mut self.blocks[block as usize];
                due.extend(b.entries[..b.len as usize].iter().map(|&e| (e, tick)));
                let next = b.next;
                b.next = self.free;
                self.free = block;
                block = next;
            }
            self.next += 1;
        }
    }

    /// Storage blocks allocated (in use and free), for tests.
    #[cfg(test)]
    fn blocks_allocated(&self) -> usize {
        self.blocks.len()
    }
}

impl Default for Wheel {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fire_at_their_tick_and_not_before() {
        let mut w = Wheel::new();
        let e = Entry { slot: 3, gen: 1 };
        let at = w.schedule(e, 2);
        assert_eq!(at, 2);
        let mut due = Vec::new();
        w.expire(&mut due);
        assert!(due.is_empty() || w.now() >= 2);
        std::thread::sleep(TICK * 3);
        w.expire(&mut due);
        assert_eq!(due, [(e, 2)]);
    }

    #[test]
    fn fired_blocks_are_reused_so_laps_allocate_nothing() {
        let mut w = Wheel::new();
        let mut due = Vec::new();
        // A burst in one slot, then the same number spread over others.
        for slot in 0..10_000 {
            w.schedule(Entry { slot, gen: 0 }, 0);
        }
        w.expire(&mut due);
        assert_eq!(due.len(), 10_000);
        let allocated = w.blocks_allocated();
        assert_eq!(allocated, 10_000usize.div_ceil(BLOCK));
        for lap in 0..3 {
            for slot in 0..10_000u32 {
                let at = w.next + 1 + slot % 5 + lap;
                w.schedule(Entry { slot, gen: lap }, at);
            }
            let mut fired = Vec::new();
            while fired.len() < 10_000 {
                std::thread::sleep(TICK);
                w.expire(&mut fired);
            }
            assert_eq!(fired.len(), 10_000);
        }
        // 5 partly filled slots need at most 5 more blocks than a burst.
        assert!(w.blocks_allocated() <= allocated + 5);
    }

    #[test]
    fn far_deadlines_are_clamped_to_the_span() {
        let mut w = Wheel::new();
        let at = w.schedule(Entry { slot: 0, gen: 0 }, 1_000_000);
        assert_eq!(at, SLOTS as Tick - 1);
        assert_eq!(Wheel::ticks(Duration::from_millis(1)), 1);
        assert_eq!(Wheel::ticks(Duration::from_secs(30)), 300);
    }
}
