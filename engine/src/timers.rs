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

/// Entries a slot keeps room for once it has fired; a slot that held more
/// gives its memory back, so the wheel holds memory for the entries
/// scheduled now, not for the busiest lap it has seen.
const KEPT_PER_SLOT: usize = 16;

/// The wheel. 8 bytes per scheduled entry, plus at most
/// [`KEPT_PER_SLOT`] entries' room per empty slot.
pub struct Wheel {
    start: Instant,
    slots: Vec<Vec<Entry>>,
    /// Next tick to fire.
    next: Tick,
}

impl Wheel {
    /// An empty wheel starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            slots: vec![Vec::new(); SLOTS],
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
        self.slots[at as usize % SLOTS].push(entry);
        at
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
            let slot = &mut self.slots[tick as usize % SLOTS];
            due.extend(slot.drain(..).map(|e| (e, tick)));
            slot.shrink_to(KEPT_PER_SLOT);
            self.next += 1;
        }
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
    fn a_fired_slot_gives_back_what_a_burst_grew() {
        let mut w = Wheel::new();
        for slot in 0..10_000 {
            w.schedule(Entry { slot, gen: 0 }, 0);
        }
        let mut due = Vec::new();
        w.expire(&mut due);
        assert_eq!(due.len(), 10_000);
        assert!(w.slots[0].capacity() <= KEPT_PER_SLOT);
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
