//! Commands from other threads (publish, broadcast, user commands, drain,
//! rebalance, shutdown), read when the wake-up eventfd's read completes.

use super::Worker;
use crate::command::Command;
use crate::connections::{Fanout, CLOSE_TIMEOUT};
use crate::delivery::Frames;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// This worker's own copy of frames shared by several workers (`copy`):
/// every subscriber's queue then bumps a reference count that no other
/// thread touches (one copy per worker per publish instead of a cache line
/// bounced between cores per delivery). The compressed frame is copied,
/// never compressed again.
fn local(copy: bool, frames: &Frames) -> Frames {
    if !copy {
        return frames.clone();
    }
    Frames {
        plain: Bytes::copy_from_slice(&frames.plain),
        deflated: frames.deflated.as_deref().map(Bytes::copy_from_slice),
    }
}

impl Worker {
    /// Applies every command waiting. The wake flag is cleared first, so a
    /// command sent while this runs either is seen here or writes the
    /// eventfd again.
    pub(super) fn drain_commands(&mut self) {
        self.wake.pending.swap(false, Ordering::AcqRel);
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Publish {
                    topics,
                    users,
                    frames,
                    v1,
                    direct,
                    skip,
                    ack,
                } => {
                    let copy = self.copy_frames;
                    let frames = local(copy, &frames);
                    let local = |f: &Frames| local(copy, f);
                    let skip = skip
                        .filter(|o| o.worker as usize == self.index)
                        .map(|o| (o.slot, o.gen));
                    let fanout = Fanout {
                        topics: &topics,
                        users: &users,
                        frames: &frames,
                        v1: &v1,
                        direct: &direct,
                        skip,
                    };
                    ack.complete(self.conns.publish(&fanout, local));
                }
                Command::Disconnect {
                    users,
                    code,
                    reason,
                    ack,
                } => ack.complete(self.conns.disconnect(&users, code, &reason)),
                Command::UserConnections { user, ack } => {
                    ack.complete(self.conns.user_connections(&user));
                }
                Command::Broadcast { frames, v1, ack } => {
                    let copy = self.copy_frames;
                    let frames = local(copy, &frames);
                    let local = |f: &Frames| local(copy, f);
                    ack.complete(self.conns.broadcast(&frames, &v1, local));
                }
                Command::Recovered {
                    slot,
                    gen,
                    topic,
                    position,
                } => self.conns.recovered(slot, gen, &topic, position),
                Command::Resync { topics, ack } => ack.complete(self.conns.resync(&topics)),
                Command::Reply { slot, gen, frame } => self.conns.reply_frame(slot, gen, frame),
                Command::Admit { slot, gen, verdict } => self.conns.admit(slot, gen, verdict),
                Command::Presence {
                    topic,
                    joined,
                    json,
                    skip,
                } => {
                    self.conns.presence_event(&topic, joined, &json, skip);
                }
                Command::Drain { period } => self.begin_drain(period),
                Command::Rebalance { fraction, period } => {
                    if self.stop_by.is_none() {
                        self.conns
                            .close_spread(fraction, period, "rebalancing", false);
                    }
                }
                Command::Shutdown => self.begin_shutdown(),
                #[cfg(feature = "fault-injection")]
                Command::InjectPanic => panic!("injected worker panic (fault-injection build)"),
            }
        }
        self.conns.commands_applied();
    }

    /// Closes the listener (the load balancer's connects now fail here and
    /// go to other nodes), spreads 1001 closes over 90% of `period`, and
    /// sets the exit deadline. The last tenth of the period is left for
    /// the last close handshakes and queued frames to finish.
    fn begin_drain(&mut self, period: Duration) {
        if self.stop_by.is_some() {
            return;
        }
        self.close_listener();
        self.stop_by = Some(Instant::now() + period);
        self.conns
            .close_spread(1.0, period.mul_f64(0.9), "server draining", true);
    }

    /// Closes every connection at once and exits after the close timeout;
    /// also ends a drain early.
    fn begin_shutdown(&mut self) {
        let deadline = Instant::now() + CLOSE_TIMEOUT + Duration::from_secs(1);
        if self.stop_by.is_some_and(|at| at <= deadline) {
            return;
        }
        self.close_listener();
        self.stop_by = Some(deadline);
        self.conns.shutdown();
    }
}
