//! One load-generator worker: a ring, a fixed-file table sized for its
//! quota of connections, a provided buffer ring, and the loop that drives
//! every connection's state machine from CQEs; `messages` reads what
//! arrives.

mod messages;

use super::conn::{now_us, Conn, State};
use super::wire::{client_frame, random_bytes, Handshake};
use super::{now_ns, Mode, Phase, Plan, Report, Shared, Transport};
use crate::target::Sources;
use io_uring::types::{CancelBuilder, DestinationSlot, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use ringcast_engine::protocol::close;
use ringcast_engine::protocol::deflate::Inflater;
use ringcast_engine::protocol::frame::parse_header;
use ringcast_engine::uring::build_ring;
use ringcast_engine::uring::{BufRing, BUFFER_GROUP};
use ringcast_engine::OpCode;
use slab::Slab;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
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

/// `user_data` layout: op in bits 56–63, generation in 48–55, aux (owned
/// send buffer key + 1, or 0) in 32–47, fixed-file slot in 0–31.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Socket = 1,
    Bind = 2,
    Connect = 3,
    Send = 4,
    Recv = 5,
    Cancel = 6,
    Close = 7,
}

fn token(op: Op, gen: u8, aux: u16, slot: u32) -> u64 {
    (op as u64) << 56 | u64::from(gen) << 48 | u64::from(aux) << 32 | u64::from(slot)
}

fn untoken(user_data: u64) -> (Op, u8, u16, u32) {
    let op = match (user_data >> 56) as u8 {
        1 => Op::Socket,
        2 => Op::Bind,
        3 => Op::Connect,
        4 => Op::Send,
        5 => Op::Recv,
        6 => Op::Cancel,
        7 => Op::Close,
        other => panic!("CQE with an unknown op {other}"),
    };
    (
        op,
        (user_data >> 48) as u8,
        (user_data >> 32) as u16,
        user_data as u32,
    )
}

/// What a worker is given at start.
pub struct Setup {
    pub index: usize,
    pub workers: usize,
    /// Connections this worker opens.
    pub quota: usize,
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
}

/// A socket address in the form the kernel reads.
#[derive(Clone, Copy)]
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn new(addr: SocketAddr) -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for
                // sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }

    fn ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }
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
    /// Soak: pings owed, and the slot the next one goes to.
    ping_credit: f64,
    ping_cursor: usize,
    /// With `--compression`: the inflater (reset per message: the server
    /// agreed to no context takeover) and its output.
    inflater: Option<Inflater>,
    inflated: Vec<u8>,
    /// Chat: messages owed, the slot the next one goes from, and the
    /// number of the next one.
    chat_credit: f64,
    chat_cursor: usize,
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
            ping_credit: 0.0,
            ping_cursor: 0,
            inflater: plan.compression.then(Inflater::default),
            inflated: Vec::new(),
            chat_credit: 0.0,
            chat_cursor: 0,
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

/// `"Connection refused (os error 111)"` for a negative CQE result.
fn errno_text(result: i32) -> String {
    io::Error::from_raw_os_error(-result).to_string()
}

/// Queues an SQE, submitting first if the submission queue is full.
fn push(ring: &mut IoUring, entry: squeue::Entry) {
    loop {
        // SAFETY: every buffer and address an SQE points to lives in the
        // worker (request, frames, addresses) or in `Clients::owned` until
        // its CQE arrives.
        if unsafe { ring.submission().push(&entry) }.is_ok() {
            return;
        }
        if let Err(e) = ring.submit() {
            assert!(
                matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)),
                "io_uring submit with a full SQ: {e}"
            );
        }
    }
}

impl Clients {
    fn shared(&self) -> &Shared {
        &self.setup.shared
    }

    /// Starts the connections due by `elapsed` at this worker's share of
    /// the planned rate.
    fn open_due(&mut self, ring: &mut IoUring, elapsed: Duration) {
        let rate = f64::from(self.setup.plan.rate.max(1)) / self.setup.workers as f64;
        let due = ((elapsed.as_secs_f64() * rate) as usize + 1).min(self.setup.quota);
        while self.started < due && self.connecting < MAX_CONNECTING {
            self.open(ring);
        }
    }

    fn open(&mut self, ring: &mut IoUring) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.conns.len() < self.setup.quota => {
                self.conns.push(Conn::default());
                (self.conns.len() - 1) as u32
            }
            None => return, // every slot busy; a CLOSE in flight frees one
        };
        let source = (!self.sources.is_empty()).then(|| {
            let n = (self.setup.index + self.started * self.setup.workers) as u64;
            let addr = RawAddr::new(SocketAddr::new(self.sources.nth(n).into(), 0));
            if self.binds.len() <= slot as usize {
                self.binds.resize_with(slot as usize + 1, || addr);
            }
            self.binds[slot as usize] = addr;
            &self.binds[slot as usize]
        });
        self.started += 1;
        self.connecting += 1;
        let conn = &mut self.conns[slot as usize];
        conn.state = State::Connecting;
        conn.stamp_us = now_us();
        conn.next_seq = 0;
        let gen = conn.gen;
        let chain = squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS;
        let dest = DestinationSlot::try_from_slot_target(slot).expect("slot below u32::MAX");
        let socket = opcode::Socket::new(self.domain, libc::SOCK_STREAM, 0)
            .file_index(Some(dest))
            .build()
            .flags(chain)
            .user_data(token(Op::Socket, gen, 0, slot));
        push(ring, socket);
        if let Some(source) = source {
            let bind = opcode::Bind::new(Fixed(slot), source.ptr(), source.len)
                .build()
                .flags(chain)
                .user_data(token(Op::Bind, gen, 0, slot));
            push(ring, bind);
        }
        let connect = opcode::Connect::new(Fixed(slot), self.dest.ptr(), self.dest.len)
            .build()
            .user_data(token(Op::Connect, gen, 0, slot));
        push(ring, connect);
    }

    fn on_connect(&mut self, ring: &mut IoUring, slot: u32, result: i32) {
        self.connecting -= 1;
        let conn = &mut self.conns[slot as usize];
        match (conn.state, result) {
            (State::Connecting, 0..) => {
                conn.state = State::Handshaking;
                match &self.setup.plan.tokens {
                    Some(tokens) => {
                        let user = format!("bench-{}-{}", self.setup.index, self.minted);
                        self.minted += 1;
                        let request = self.handshake.request_with_token(&tokens.mint(&user));
                        self.send_owned(ring, slot, request);
                    }
                    None => {
                        let request = &self.handshake.request;
                        self.send(ring, slot, request.as_ptr(), request.len(), 0);
                    }
                }
                self.arm_recv(ring, slot);
            }
            (State::Connecting, _) => {
                self.fail(format!("connect: {}", errno_text(result)));
                self.close(ring, slot);
            }
            // An earlier SQE of the chain failed and was counted.
            _ => self.close(ring, slot),
        }
    }

    fn arm_recv(&mut self, ring: &mut IoUring, slot: u32) {
        let gen = self.conns[slot as usize].gen;
        let recv = opcode::RecvMulti::new(Fixed(slot), BUFFER_GROUP)
            .build()
            .user_data(token(Op::Recv, gen, 0, slot));
        push(ring, recv);
    }

    fn send(&mut self, ring: &mut IoUring, slot: u32, ptr: *const u8, len: usize, aux: u16) {
        let gen = self.conns[slot as usize].gen;
        let send = opcode::Send::new(Fixed(slot), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
            .user_data(token(Op::Send, gen, aux, slot));
        push(ring, send);
    }

    /// Sends bytes built for this connection alone (a pong, a handshake
    /// with its own token).
    fn send_owned(&mut self, ring: &mut IoUring, slot: u32, frame: Vec<u8>) {
        if self.owned.len() >= usize::from(u16::MAX) {
            return; // 65535 replies in flight: this one is skipped
        }
        let key = self.owned.insert(frame);
        let (ptr, len) = (self.owned[key].as_ptr(), self.owned[key].len());
        self.send(ring, slot, ptr, len, key as u16 + 1);
    }

    fn send_echo(&mut self, ring: &mut IoUring, slot: u32) {
        self.conns[slot as usize].stamp_us = now_us();
        let (ptr, len) = (self.echo.as_ptr(), self.echo.len());
        self.send(ring, slot, ptr, len, 0);
    }

    /// Entering [`Phase::Run`]: echo connections send their first message.
    fn on_run(&mut self, ring: &mut IoUring) {
        if self.phase == Phase::Run && matches!(self.mode, Mode::Echo { .. }) {
            for slot in 0..self.conns.len() as u32 {
                if self.conns[slot as usize].state == State::Open {
                    self.send_echo(ring, slot);
                }
            }
        }
    }

    /// Soak: sends the pings owed for `dt`, walking the slots so that each
    /// open connection is pinged once per interval.
    fn ping_due(&mut self, ring: &mut IoUring, dt: Duration) {
        let Mode::Soak {
            ping_every: Some(every),
        } = self.mode
        else {
            return;
        };
        if self.phase != Phase::Run || self.conns.is_empty() {
            return;
        }
        self.ping_credit += dt.as_secs_f64() / every.as_secs_f64() * self.conns.len() as f64;
        let mut sent = 0;
        while self.ping_credit >= 1.0 {
            self.ping_credit -= 1.0;
            let slot = self.ping_cursor as u32;
            self.ping_cursor = (self.ping_cursor + 1) % self.conns.len();
            if self.conns[slot as usize].state == State::Open {
                let (ptr, len) = (self.ping.as_ptr(), self.ping.len());
                self.send(ring, slot, ptr, len, 0);
                sent += 1;
            }
        }
        self.shared().pings.fetch_add(sent, Ordering::Relaxed);
    }

    /// Chat: sends the messages owed for `dt`, walking the slots so that
    /// each open connection sends `rate` per second.
    fn chat_due(&mut self, ring: &mut IoUring, dt: Duration) {
        let Mode::Chat { rate, size } = self.mode else {
            return;
        };
        if self.phase != Phase::Run
            || self.conns.is_empty()
            || self.shared().quiet.load(Ordering::Relaxed)
        {
            return;
        }
        self.chat_credit += dt.as_secs_f64() * rate * self.conns.len() as f64;
        let mut sent = 0;
        while self.chat_credit >= 1.0 {
            self.chat_credit -= 1.0;
            let slot = self.chat_cursor as u32;
            self.chat_cursor = (self.chat_cursor + 1) % self.conns.len();
            if self.conns[slot as usize].state == State::Open {
                let payload =
                    crate::load::fanout_payload(self.chat_seq, size, crate::load::Filler::Spaces);
                self.chat_seq = self.chat_seq.wrapping_add(1);
                let frame = client_frame(OpCode::Text, &payload, random_bytes::<4>());
                self.send_owned(ring, slot, frame);
                sent += 1;
            }
        }
        self.shared().sent.fetch_add(sent, Ordering::Relaxed);
    }

    /// Bytes received on `slot`.
    fn on_data(&mut self, ring: &mut IoUring, slot: u32, data: &[u8]) {
        let bytes_in = &self.setup.shared.bytes_in;
        bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        let conn = &mut self.conns[slot as usize];
        let owned;
        let buf: &[u8] = match conn.partial.take() {
            Some(mut partial) => {
                partial.extend_from_slice(data);
                owned = partial;
                &owned
            }
            None => data,
        };
        let mut at = 0;
        if conn.state == State::Handshaking {
            match self.handshake.check(buf) {
                Ok(None) => return self.keep_partial(ring, slot, buf, 0),
                Ok(Some(len)) => {
                    at = len;
                    let elapsed = now_us().wrapping_sub(conn.stamp_us);
                    conn.state = State::Open;
                    self.report
                        .handshake_us
                        .saturating_record(u64::from(elapsed.max(1)));
                    let shared = &self.setup.shared;
                    shared.opened.fetch_add(1, Ordering::Relaxed);
                    shared.open.fetch_add(1, Ordering::Relaxed);
                    shared.last_opened_ns.store(now_ns(), Ordering::Relaxed);
                    if self.phase == Phase::Run && matches!(self.mode, Mode::Echo { .. }) {
                        self.send_echo(ring, slot);
                    }
                    if !self.subscribe.is_empty() {
                        self.send_owned(ring, slot, self.subscribe.clone());
                    }
                }
                Err(e) => return self.lose(ring, slot, e.to_string()),
            }
        }
        if self.conns[slot as usize].state != State::Open {
            return;
        }
        if self.sse {
            return self.on_events(ring, slot, buf, at);
        }
        while at < buf.len() {
            let header = match parse_header(&buf[at..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return self.lose(ring, slot, format!("bad frame header: {e:?}")),
            };
            if header.mask.is_some() {
                return self.lose(ring, slot, "masked server frame".into());
            }
            let end = (header.payload_len as usize)
                .checked_add(at + header.header_len)
                .filter(|&end| end - at <= MAX_PARTIAL);
            let Some(end) = end else {
                return self.lose(ring, slot, "frame too large".into());
            };
            if end > buf.len() {
                break;
            }
            let payload = &buf[at + header.header_len..end];
            at = end;
            // RSV1: compressed (permessage-deflate; only a message's
            // first frame, and ringcast sends messages unfragmented).
            let open = match (header.rsv & 0b100 != 0, self.inflater.as_mut()) {
                (false, _) => self.on_frame(ring, slot, header.opcode, payload),
                (true, Some(inflater)) => {
                    let mut out = std::mem::take(&mut self.inflated);
                    let open = match inflater.inflate(payload, MAX_PARTIAL, &mut out) {
                        Ok(()) => self.on_frame(ring, slot, header.opcode, &out),
                        Err(e) => {
                            self.lose(ring, slot, format!("bad compressed message: {e:?}"));
                            false
                        }
                    };
                    self.inflated = out;
                    open
                }
                (true, None) => {
                    self.lose(ring, slot, "RSV1 without permessage-deflate".into());
                    false
                }
            };
            if !open {
                return;
            }
        }
        if at < buf.len() {
            self.keep_partial(ring, slot, buf, at);
        }
    }

    /// Server-Sent Events from `buf[at..]`: each unnamed event's `data:`
    /// line is a message; named events (`subscribed`) and heartbeats are
    /// not; `event: close` ends the stream.
    fn on_events(&mut self, ring: &mut IoUring, slot: u32, buf: &[u8], mut at: usize) {
        while let Some(len) = buf[at..].windows(2).position(|w| w == b"\n\n") {
            let event = &buf[at..at + len];
            at += len + 2;
            let mut name: &[u8] = b"";
            let mut data = None;
            for line in event.split(|&b| b == b'\n') {
                if let Some(value) = line.strip_prefix(b"event: ") {
                    name = value;
                } else if let Some(value) = line.strip_prefix(b"data: ") {
                    data = Some(value);
                }
            }
            match (name, data) {
                (b"close", _) => {
                    let why = String::from_utf8_lossy(data.unwrap_or_default());
                    return self.lose(ring, slot, format!("server sent event: close {why}"));
                }
                (b"", Some(payload)) if self.on_message(ring, slot, payload) => {
                    self.count_message();
                }
                _ => {}
            }
        }
        if at < buf.len() {
            self.keep_partial(ring, slot, buf, at);
        }
    }

    /// Counts a data message received (fan-out delivery, echo).
    fn count_message(&self) {
        self.shared().messages.fetch_add(1, Ordering::Relaxed);
        self.shared()
            .last_message_ns
            .store(now_ns(), Ordering::Relaxed);
    }

    /// Keeps `buf[at..]` until more bytes arrive.
    fn keep_partial(&mut self, ring: &mut IoUring, slot: u32, buf: &[u8], at: usize) {
        if buf.len() - at > MAX_PARTIAL {
            return self.lose(ring, slot, "frame too large".into());
        }
        self.conns[slot as usize].partial = Some(Box::new(buf[at..].to_vec()));
    }

    /// One complete frame; false when the connection was closed.
    fn on_frame(&mut self, ring: &mut IoUring, slot: u32, opcode: OpCode, payload: &[u8]) -> bool {
        match opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if self.on_message(ring, slot, payload) {
                    self.count_message();
                }
            }
            OpCode::Ping => {
                let pong = client_frame(OpCode::Pong, payload, random_bytes::<4>());
                self.send_owned(ring, slot, pong);
            }
            OpCode::Pong => {
                self.shared().pongs.fetch_add(1, Ordering::Relaxed);
            }
            OpCode::Close => {
                let code = match close::parse_payload(payload) {
                    Ok(Some(code)) => code.to_string(),
                    Ok(None) => "no code".into(),
                    Err(_) => "malformed".into(),
                };
                self.lose(ring, slot, format!("server sent close {code}"));
                return false;
            }
        }
        true
    }

    /// Counts a connection that failed before it opened.
    fn fail(&mut self, reason: String) {
        self.shared().failed.fetch_add(1, Ordering::Relaxed);
        *self.report.failures.entry(reason).or_default() += 1;
    }

    /// Counts an open connection that was lost (or a handshake that
    /// failed) and closes it.
    fn lose(&mut self, ring: &mut IoUring, slot: u32, reason: String) {
        match self.conns[slot as usize].state {
            State::Open => {
                self.shared().dropped.fetch_add(1, Ordering::Relaxed);
                self.shared().open.fetch_sub(1, Ordering::Relaxed);
                *self.report.drops.entry(reason).or_default() += 1;
            }
            State::Handshaking => self.fail(reason),
            _ => return,
        }
        self.close(ring, slot);
    }

    /// Cancels the slot's operations and closes it; the CLOSE CQE frees it.
    fn close(&mut self, ring: &mut IoUring, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        conn.state = State::Closing;
        conn.partial = None;
        let gen = conn.gen;
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::fd(Fixed(slot)).all())
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(token(Op::Cancel, gen, 0, slot));
        push(ring, cancel);
        let close =
            opcode::Close::new(Fixed(slot))
                .build()
                .user_data(token(Op::Close, gen, 0, slot));
        push(ring, close);
    }

    fn release(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        debug_assert_eq!(conn.state, State::Closing);
        conn.state = State::Free;
        conn.gen = conn.gen.wrapping_add(1);
        self.free.push(slot);
    }
}
