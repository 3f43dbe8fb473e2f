//! A worker's connections and everything that reacts to their bytes and
//! their deadlines.
//!
//! This layer never touches the ring. It records what the ring must do in
//! two lists, [`Io::flush`] (connections with bytes to send or a shutdown
//! due) and [`Io::release`] (connections to tear down), which the worker
//! turns into SQEs once per loop iteration.
//!
//! - [`table`]: the records by fixed-file slot, in memory that follows load;
//! - [`io`]: what connections share (lists, wheel, send-queue pool, limits)
//!   and the steps built on it: queue, close, reject, release;
//! - `handshake`: the upgrade request, routing, admission and the
//!   permessage-deflate negotiation;
//! - `compression`: the worker's shared inflater and echo compressors;
//! - `messages`: decoded frames, control messages, subscriptions and
//!   token refreshes;
//! - `fanout`: publish and broadcast, to topics and to users, and the
//!   disconnection of users;
//! - `recovery`: subscriptions with a position: skips, broker holds and
//!   the broker's answers;
//! - `transport`: one module per endpoint (raw WebSocket, `ringcast.v1`,
//!   echo, SSE, long-poll) behind one interface: open, bytes in,
//!   deliver, due, close bytes;
//! - `duplex`: client publishes, rpc ops and raw room messages, their
//!   rate limits, and their hand-off upstream;
//! - `deadlines`: timers, drain and rebalance spreads, shutdown, trims.

mod compression;
mod deadlines;
mod duplex;
mod fanout;
mod handshake;
pub mod io;
mod messages;
mod opening;
mod presence;
mod recovery;
pub mod table;
mod transport;

pub use fanout::Fanout;
pub use io::{Io, CLOSE_TIMEOUT};

use crate::admission::Admission;
use crate::config::Config;
use crate::conn::{Conn, Deflate, Flag, Phase};
use crate::protocol::close::code;
use crate::session::Sessions;
use crate::spread::Spread;
use crate::stats::{close_code_index, WorkerStats};
use crate::timers::{Entry, Tick};
use messages::Action;
use std::net::IpAddr;
use std::sync::Arc;
use table::Table;

/// The connections of one worker, indexed by fixed-file slot.
pub struct Connections {
    table: Table,
    topics: crate::topics::Topics,
    sessions: Sessions,
    /// Ring-facing lists, timers, send-queue pool and counters.
    pub io: Io,
    next_gen: u32,
    actions: Vec<Action>,
    due: Vec<(Entry, Tick)>,
    spread: Option<Spread>,
    next_trim: Tick,
    /// History, read when a subscription resumes without a broker.
    hub: Arc<crate::hub::Hub>,
    /// What each transport keeps beside the table.
    transports: transport::Transports,
    /// Subscriptions that read a position: skips and broker holds.
    resumes: recovery::Resumes,
    /// Client publish, rooms, rate limits (with their state by slot),
    /// hooks, and where events for the server go (see
    /// [`crate::upstream`]).
    duplex: duplex::Duplex,
    /// Whether deliveries come from a broker (see [`crate::broker`]).
    broker: bool,
    /// Broker events the upstream sink could not take yet, sent again
    /// before the next one and after each pass over the commands.
    unsent: Vec<crate::upstream::Event>,
    /// Subscriptions that get presence joins and leaves.
    join_leave: presence::Listeners,
    /// Whether presence changes are handed up for the presence webhook.
    presence_hook: bool,
    /// Whether topic interest is handed up (a broker, or the channels
    /// hook).
    interest_up: bool,
}

/// The connection a CQE for (`slot`, `gen`) belongs to.
///
/// # Panics
/// If the slot holds no connection or another generation: a CQE outlived
/// its connection, which the release protocol rules out.
fn tenant(table: &mut Table, slot: u32, gen: u32) -> &mut Conn {
    let conn = table.get_mut(slot).expect("CQE for an empty slot");
    assert_eq!(conn.gen, gen, "CQE for a previous tenant of slot {slot}");
    conn
}

impl Connections {
    /// An empty table for slots `0..capacity`, for worker number `worker`.
    /// Memory grows with the connections, not with `capacity`. `handle`
    /// is the runtime's, once set (see `duplex.rs`).
    pub fn new(
        config: &Config,
        capacity: usize,
        stats: Arc<[WorkerStats]>,
        worker: usize,
        admission: &Arc<Admission>,
        hub: Arc<crate::hub::Hub>,
        handle: Arc<std::sync::OnceLock<crate::Handle>>,
    ) -> Self {
        Self {
            table: Table::new(capacity),
            topics: crate::topics::Topics::default(),
            sessions: Sessions::default(),
            io: Io::new(config, stats, worker, admission.clone()),
            next_gen: 0,
            actions: Vec::new(),
            due: Vec::new(),
            spread: None,
            next_trim: 0,
            hub,
            transports: transport::Transports::default(),
            resumes: recovery::Resumes::default(),
            duplex: duplex::Duplex::new(config, handle),
            broker: config.broker && config.upstream.is_some(),
            unsent: Vec::new(),
            join_leave: presence::Listeners::default(),
            presence_hook: config.hooks.presence && config.upstream.is_some(),
            interest_up: (config.broker || config.hooks.channels) && config.upstream.is_some(),
        }
    }

    /// Whether no connection is left.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The connection in `slot`, checking the CQE's generation.
    ///
    /// # Panics
    /// See [`tenant`].
    pub fn get(&mut self, slot: u32, gen: u32) -> &mut Conn {
        tenant(&mut self.table, slot, gen)
    }

    /// The slots holding a connection now.
    pub fn slots(&mut self) -> Vec<u32> {
        let mut slots = Vec::with_capacity(self.table.len());
        self.table.for_each(|slot, _| slots.push(slot));
        slots
    }

    /// The connection in `slot`, if any (for lists built this iteration).
    pub fn slot(&mut self, slot: u32) -> Option<&mut Conn> {
        self.table.get_mut(slot)
    }

    /// Registers a connection the kernel accepted into `slot` from `ip`
    /// (`None` when the accept reported no address). Returns its
    /// generation.
    pub fn accept(&mut self, slot: u32, ip: Option<IpAddr>) -> u32 {
        self.next_gen = (self.next_gen + 1) & crate::ring::token::GEN_MASK;
        let now = self.io.wheel.now();
        let handshaking = opening::Handshaking {
            peer: ip,
            ..opening::Handshaking::default()
        };
        self.io.handshaking.insert(slot, handshaking);
        let mut conn = Conn::new(self.next_gen, now);
        let at = now + self.io.limits.handshake;
        self.io.schedule(&mut conn, slot, at);
        self.table.insert(slot, conn);
        let stats = self.io.stats();
        WorkerStats::add(&stats.accepted, 1);
        WorkerStats::add(&stats.connections, 1);
        self.next_gen
    }

    /// Bytes received on `slot`. `data` is the kernel's buffer, unmasked
    /// and parsed in place.
    pub fn on_data(&mut self, slot: u32, gen: u32, data: &mut [u8]) {
        WorkerStats::add(&self.io.stats().bytes_in, data.len() as u64);
        let now = self.io.wheel.now();
        let conn = self.get(slot, gen);
        conn.last_active = now;
        match conn.phase() {
            Phase::Handshake => self.on_handshake_bytes(slot, data),
            Phase::Open => {
                let endpoint = conn.endpoint();
                self.transport_bytes(slot, endpoint, data);
            }
            // Input after our close frame or during teardown is discarded.
            Phase::Closing | Phase::ShutDown | Phase::Releasing => {}
        }
    }

    /// The peer closed its side (receive returned 0), or the socket failed.
    pub fn on_eof(&mut self, slot: u32, gen: u32) {
        let conn = tenant(&mut self.table, slot, gen);
        self.io.release(conn, slot);
    }

    /// The send in flight wrote `result` bytes (or failed with `-errno`).
    pub fn on_sent(&mut self, slot: u32, gen: u32, result: i32) {
        let conn = tenant(&mut self.table, slot, gen);
        if result < 0 {
            conn.out.abandon_send();
            return self.io.release(conn, slot);
        }
        conn.out.sent(result as usize, &mut self.io.pool);
        let stats = self.io.stats();
        WorkerStats::add(&stats.bytes_out, result as u64);
        WorkerStats::sub(&stats.outbound_bytes, result as u64);
        if !conn.out.is_empty() || conn.phase() == Phase::Closing {
            self.io.mark_flush(conn, slot);
        }
    }

    /// `shutdown(SHUT_WR)` completed: wait for the peer's EOF.
    pub fn on_shutdown(&mut self, slot: u32, gen: u32, result: i32) {
        let now = self.io.wheel.now();
        let conn = tenant(&mut self.table, slot, gen);
        conn.set(Flag::ShutdownInFlight, false);
        if conn.phase() == Phase::Closing {
            conn.enter(Phase::ShutDown, now);
        }
        if result < 0 || !conn.has(Flag::RecvArmed) {
            self.io.release(conn, slot);
        }
    }

    /// Removes a connection whose operations have all completed,
    /// unsubscribes it and lets go of its session. The caller closes the
    /// slot.
    ///
    /// # Panics
    /// If an operation is still in flight.
    pub fn remove(&mut self, slot: u32) {
        let mut conn = self.table.remove(slot);
        assert!(
            !conn.busy(),
            "removing slot {slot} with operations in flight"
        );
        for &member in conn.topics.as_slice() {
            self.leave(slot, member);
        }
        let code = match conn.close_code {
            0 => code::ABNORMAL,
            c => c,
        };
        let admitted = conn.route.is_some();
        if admitted {
            let user = self.sessions.user(conn.session).map(str::to_owned);
            self.duplex_closed(slot, conn.gen, user.as_deref(), code);
        }
        self.sessions.detach(conn.session, slot);
        self.transports.forget(slot);
        let unsent = conn.out.clear(&mut self.io.pool);
        if conn.deflate() != Deflate::Off {
            WorkerStats::sub(&self.io.stats().compressed_connections, 1);
        }
        if admitted {
            self.io.admission_closed(slot);
        } else {
            self.io.end_handshake(slot);
        }
        let stats = self.io.stats();
        WorkerStats::sub(&stats.connections, 1);
        WorkerStats::sub(&stats.outbound_bytes, unsent as u64);
        WorkerStats::add(&stats.closed, 1);
        if admitted {
            WorkerStats::add(&stats.closed_by_code[close_code_index(code)], 1);
        }
    }
}
