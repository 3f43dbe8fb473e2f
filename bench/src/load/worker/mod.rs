//! One load-generator worker: a ring, a fixed-file table sized for its
//! quota of connections, a provided buffer ring, and the loop that drives
//! every connection's state machine from CQEs. One concern a file:
//! - `sqe`: `user_data` tokens, addresses, queueing SQEs;
//! - `connect`: a connection's life, from SOCKET to CLOSE;
//! - `frames` and `sse`: what arrives, as WebSocket frames or SSE events;
//! - `messages`: a data message, handed to its mode: `soak`, `fanout`,
//!   `echo`, `recover` or `chat`, each of which also sends what its mode
//!   sends.

mod chat;
mod connect;
mod echo;
mod fanout;
mod frames;
mod messages;
mod recover;
mod soak;
mod sqe;
mod sse;

use super::conn::{Conn, State};
use super::wire::{client_frame, random_bytes, Handshake};
use super::{Mode, Phase, Plan, Report, Shared, Transport};
use crate::target::Sources;
use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, IoUring};
use ringcast_engine::protocol::deflate::Inflater;
use ringcast_engine::uring::{build_ring, BufRing};
use ringcast_engine::OpCode;
use slab::Slab;
use sqe::{errno_text, untoken, Op, RawAddr};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connect chains in flight per worker at once; more would only overflow
/// the server's SYN and accept queues and turn into 1 s SYN retransmits.
const MAX_CONNECTING: usize = 512;
/// Receive buffers per worker, and their size in bytes. Incremental
/// consumption lets one buffer serve many small frames.
const READ_BUFFERS: u16 = 1024;
const READ_BUFFER_SIZE: u32 = 4096;
/// Largest handshake response or frame accepted, in bytes.
const MAX_PARTIAL: usize = 64 << 20;
/// Loop wake-up while connections are still being opened, and otherwise.
const RAMP_TICK: Duration = Duration::from_millis(1);
const IDLE_TICK: Duration = Duration::from_millis(10);

/// What a worker is given at start.
pub struct Setup {
    pub index: usize,
    pub workers: usize,
    /// Connections this worker opens.
    pub quota: usize,
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
}

/// The worker: its ring and buffers, and everything else in [`Clients`].
pub struct Worker {
    ring: IoUring,
    bufs: BufRing,
    clients: Clients,
    /// Receives stopped by ENOBUFS, re-armed after this batch of CQEs has
    /// returned buffers.
    starved: Vec<u32>,
}

/// The connections and what they send.
struct Clients {
    conns: Vec<Conn>,
    /// Slots released and not yet reused; unused slots start at `conns.len()`.
    free: Vec<u32>,
    /// Owned send buffers (pong replies) until their SEND completes.
    owned: Slab<Vec<u8>>,
    handshake: Handshake,
    /// Connections are SSE streams: events, not frames.
    sse: bool,
    ping: Vec<u8>,
    echo: Vec<u8>,
    /// Recover: the subscribe each connection sends once open.
    subscribe: Vec<u8>,
    dest: RawAddr,
    sources: Sources,
    /// Each slot's source address while its BIND is in flight.
    binds: Vec<RawAddr>,
    domain: i32,
    mode: Mode,
    setup: Setup,
    started: usize,
    /// Tokens minted (with auth): numbers each connection's user.
    minted: u64,
    connecting: usize,
    phase: Phase,
    report: Report,
    /// Soak: the pings' pacing.
    pings: Pacer,
    /// With `--compression`: the inflater (reset per message: the server
    /// agreed to no context takeover) and its output.
    inflater: Option<Inflater>,
    inflated: Vec<u8>,
    /// Chat: the messages' pacing, and the number of the next one.
    chats: Pacer,
    chat_seq: u32,
}

impl Worker {
    /// Sets up the ring, a sparse fixed-file table of `setup.quota` slots
    /// and the buffer ring.
    ///
    /// # Errors
    /// `io_uring_setup(2)` or `io_uring_register(2)` errors (EMFILE when the
    /// quota exceeds RLIMIT_NOFILE).
    pub fn new(setup: Setup) -> io::Result<Self> {
        let (ring, _) = build_ring()?;
        ring.submitter()
            .register_files_sparse(setup.quota.max(1) as u32)?;
        let bufs = BufRing::register(&ring, READ_BUFFERS, READ_BUFFER_SIZE)?;
        let plan = &setup.plan;
        let mask = random_bytes::<4>();
        let echo = match plan.mode {
            Mode::Echo { size } => client_frame(OpCode::Binary, &vec![b'e'; size], mask),
            _ => Vec::new(),
        };
        let subscribe = match plan.mode {
            Mode::Recover { subscribe, .. } => {
                client_frame(OpCode::Text, subscribe.as_bytes(), mask)
            }
            _ => Vec::new(),
        };
        let sources = plan.sources.clone();
        let target = &plan.targets[setup.index % plan.targets.len()];
        let domain = match target.addr.ip() {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        };
        let clients = Clients {
            conns: Vec::with_capacity(setup.quota),
            free: Vec::new(),
            owned: Slab::new(),
            handshake: match plan.transport {
                Transport::Websocket => Handshake::new(
                    &target.host,
                    &target.resource,
                    plan.mode.subprotocol(),
                    plan.compression,
                ),
                Transport::Sse => Handshake::sse(&target.host, &target.resource),
            },
            sse: plan.transport == Transport::Sse,
            ping: client_frame(OpCode::Ping, b"", mask),
            echo,
            subscribe,
            dest: RawAddr::new(target.addr),
            binds: Vec::with_capacity(if sources.is_empty() { 0 } else { setup.quota }),
            sources,
            domain,
            mode: plan.mode,
            started: 0,
            minted: 0,
            connecting: 0,
            phase: Phase::Ramp,
            report: Report::new(),
            pings: Pacer::default(),
            inflater: plan.compression.then(Inflater::default),
            inflated: Vec::new(),
            chats: Pacer::default(),
            chat_seq: 0,
            setup,
        };
        Ok(Self {
            ring,
            bufs,
            clients,
            starved: Vec::new(),
        })
    }

    /// Runs until the controller sets [`Phase::Stop`], then returns the
    /// report. Dropping the ring closes every connection.
    ///
    /// # Errors
    /// An `io_uring_enter(2)` error other than ETIME, EINTR or EBUSY.
    pub fn run(mut self) -> io::Result<Report> {
        let start = Instant::now();
        let mut last = start;
        loop {
            let phase = self.clients.setup.shared.phase();
            if phase == Phase::Stop {
                return Ok(self.clients.report);
            }
            if phase != self.clients.phase {
                self.clients.phase = phase;
                self.clients.on_run(&mut self.ring);
            }
            let now = Instant::now();
            self.clients.open_due(&mut self.ring, now - start);
            self.clients.ping_due(&mut self.ring, now - last);
            self.clients.chat_due(&mut self.ring, now - last);
            last = now;
            let tick = if self.clients.started < self.clients.setup.quota {
                RAMP_TICK
            } else {
                IDLE_TICK
            };
            let ts = Timespec::from(tick);
            let args = SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                match e.raw_os_error() {
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY) => {}
                    _ => return Err(e),
                }
            }
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                self.dispatch(cqe.user_data(), cqe.result(), cqe.flags());
            }
            for slot in std::mem::take(&mut self.starved) {
                if self.clients.conns[slot as usize].state == State::Open
                    || self.clients.conns[slot as usize].state == State::Handshaking
                {
                    self.clients.arm_recv(&mut self.ring, slot);
                }
            }
        }
    }

    fn dispatch(&mut self, user_data: u64, result: i32, flags: u32) {
        let (op, gen, aux, slot) = untoken(user_data);
        if op == Op::Recv && result > 0 {
            let bid = cqueue::buffer_select(flags).expect("receive CQE without a buffer");
            // SAFETY: `bid` and `result` come from this CQE, which is marked
            // consumed right after its bytes are handled.
            let data = unsafe { self.bufs.filled(bid, result as usize) };
            if self.clients.conns[slot as usize].gen == gen {
                self.clients.on_data(&mut self.ring, slot, data);
            }
            self.bufs
                .consumed(bid, result as usize, cqueue::buffer_more(flags));
        }
        let clients = &mut self.clients;
        if op == Op::Send && aux != 0 {
            clients.owned.remove(usize::from(aux - 1));
        }
        if clients.conns[slot as usize].gen != gen {
            return; // a late CQE of the slot's previous tenant
        }
        match op {
            Op::Socket | Op::Bind if result < 0 => {
                let what = if op == Op::Socket { "socket" } else { "bind" };
                clients.fail(format!("{what}: {}", errno_text(result)));
                clients.conns[slot as usize].state = State::ChainFailed;
            }
            Op::Socket | Op::Bind | Op::Cancel => {}
            Op::Connect => clients.on_connect(&mut self.ring, slot, result),
            Op::Send if result < 0 => {
                clients.lose(
                    &mut self.ring,
                    slot,
                    format!("send: {}", errno_text(result)),
                );
            }
            Op::Send => {}
            Op::Recv => {
                if result == 0 {
                    clients.lose(&mut self.ring, slot, "closed by server (EOF)".into());
                } else if result == -libc::ENOBUFS {
                    clients.report.buffer_ring_empty += 1;
                    self.starved.push(slot);
                } else if result < 0 && result != -libc::ECANCELED {
                    clients.lose(
                        &mut self.ring,
                        slot,
                        format!("recv: {}", errno_text(result)),
                    );
                } else if !cqueue::more(flags) && result > 0 {
                    // The kernel ended the multishot receive (e.g. a full CQ).
                    let state = clients.conns[slot as usize].state;
                    if matches!(state, State::Open | State::Handshaking) {
                        clients.arm_recv(&mut self.ring, slot);
                    }
                }
            }
            Op::Close => clients.release(slot),
        }
    }
}

impl Clients {
    fn shared(&self) -> &Shared {
        &self.setup.shared
    }
}

/// Sends spread evenly over the connections (soak pings, chat messages):
/// the sends owed, and the slot the next one goes to.
#[derive(Default)]
struct Pacer {
    credit: f64,
    cursor: usize,
}

impl Pacer {
    /// Adds `owed` sends and returns the open slots the whole ones go to,
    /// walking the slots round robin; a slot that is not open loses its
    /// turn.
    fn due(&mut self, owed: f64, conns: &[Conn]) -> Vec<u32> {
        let mut slots = Vec::new();
        if conns.is_empty() {
            return slots;
        }
        self.credit += owed;
        while self.credit >= 1.0 {
            self.credit -= 1.0;
            let slot = self.cursor;
            self.cursor = (self.cursor + 1) % conns.len();
            if conns[slot].state == State::Open {
                slots.push(slot as u32);
            }
        }
        slots
    }
}
