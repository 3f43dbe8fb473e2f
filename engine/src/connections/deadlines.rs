//! Time-driven work: handshake, ping, idle and close timeouts from the
//! timer wheel; the closes of a drain or rebalance spread over a period;
//! shutdown; and the once-a-second trim of memory the load has left.

use super::Connections;
use crate::conn::Phase;
use crate::protocol::close::code;
use crate::protocol::handshake::Reject;
use crate::spread::Spread;
use crate::timers::Tick;
use std::time::{Duration, Instant};

impl Connections {
    /// Starts closing `fraction` of the open connections with 1001 and
    /// `reason`, chosen at random and spread evenly over `over` (see
    /// [`Spread`]); replaces any plan under way. With `drain`, handshakes
    /// that complete from now on are refused with 503.
    pub fn close_spread(
        &mut self,
        fraction: f64,
        over: Duration,
        reason: &'static str,
        drain: bool,
    ) {
        self.io.draining |= drain;
        let mut open = Vec::new();
        self.table.for_each(|slot, c| {
            if c.phase() == Phase::Open {
                open.push((slot, c.gen));
            }
        });
        self.spread = Some(Spread::new(open, fraction, over, reason));
    }

    /// Closes the connections whose turn in the spread has come.
    fn step_spread(&mut self) {
        let Some(spread) = self.spread.as_mut() else {
            return;
        };
        let reason = spread.reason;
        for &(slot, gen) in spread.due(Instant::now()) {
            if let Some(conn) = self.table.get_mut(slot).filter(|c| c.gen == gen) {
                self.io.close(conn, slot, Some(code::GOING_AWAY), reason);
            }
        }
        if spread.is_done() {
            self.spread = None;
        }
    }

    /// Closes every connection for shutdown: open ones with 1001, the rest
    /// at once.
    pub fn shutdown(&mut self) {
        self.io.draining = true;
        self.spread = None;
        let io = &mut self.io;
        self.table.for_each(|slot, conn| match conn.phase() {
            Phase::Open => io.close(conn, slot, Some(code::GOING_AWAY), "server shutting down"),
            Phase::Handshake => io.release(conn, slot),
            Phase::Closing | Phase::ShutDown | Phase::Releasing => {}
        });
    }

    /// Time until the next timer tick.
    pub fn until_next_tick(&self) -> Duration {
        self.io.wheel.until_next_tick()
    }

    /// Runs every due deadline: handshake timeouts (408), pings (SSE
    /// heartbeats), idle
    /// timeouts (1001), expired tokens (4001), close handshakes that took
    /// too long, and the
    /// closes of a drain or rebalance whose turn has come. About once a
    /// second it also gives back memory the load no longer needs (spare
    /// send queues, empty table chunks).
    pub fn fire_timers(&mut self) {
        // Broker events the upstream sink refused wait at most a tick,
        // even when no command comes to retry them.
        if !self.unsent.is_empty() {
            self.send_unsent();
        }
        self.step_spread();
        let mut due = std::mem::take(&mut self.due);
        self.io.wheel.expire(&mut due);
        let now = self.io.wheel.now();
        for (entry, tick) in due.drain(..) {
            let Some(conn) = self.table.get_mut(entry.slot) else {
                continue;
            };
            if conn.gen != entry.gen || conn.timer_at != tick {
                continue; // stale entry
            }
            let (slot, limits) = (entry.slot, &self.io.limits);
            match conn.phase() {
                Phase::Handshake => {
                    let deadline = conn.phase_since + limits.handshake;
                    if now >= deadline {
                        self.io.reject(conn, slot, Reject::Timeout);
                    } else {
                        self.io.schedule(conn, slot, deadline);
                    }
                }
                Phase::Open => {
                    let endpoint = conn.endpoint();
                    self.transport_due(slot, endpoint, now);
                }
                Phase::Closing | Phase::ShutDown => {
                    let deadline = conn.phase_since + limits.close;
                    if now >= deadline {
                        self.io.release(conn, slot);
                    } else {
                        self.io.schedule(conn, slot, deadline);
                    }
                }
                Phase::Releasing => {}
            }
        }
        self.due = due;
        if now >= self.next_trim {
            self.next_trim = now + TRIM_EVERY;
            self.io.pool.trim();
            let held = self.io.codec.trim();
            let gauge = &self.io.stats().compression_state_bytes;
            gauge.store(held, std::sync::atomic::Ordering::Relaxed);
            self.table.trim();
            // A reconnect storm's peak of handshakes need not stay.
            let handshaking = self.io.handshaking.len();
            self.io.handshaking.shrink_to(handshaking * 2);
            let peers = self.io.peers.len();
            self.io.peers.shrink_to(peers * 2);
            self.duplex.trim();
        }
    }
}

/// Ticks between two trims of spare memory (1 s).
const TRIM_EVERY: Tick = (1000 / crate::timers::TICK.as_millis()) as Tick;
