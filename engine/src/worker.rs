//! The ring loop of one worker thread.
//!
//! Each iteration: submit the SQEs queued since the last one and wait for
//! at least one CQE (or the next timer tick); dispatch every CQE; fire due
//! timers; then turn the connection layer's flush and release lists into
//! SQEs. Those SQEs go to the kernel in one `io_uring_enter` at the top of
//! the next iteration, so a broadcast to N subscribers is one batch.
//!
//! Accepts are single-shot, up to [`ACCEPTS`] armed at once, each with its
//! own address buffer (a multishot accept reports no peer address). No
//! more are armed than there are free fixed-file slots and accept-rate
//! tokens, so a full table or an exceeded rate leaves connections waiting
//! in the listen backlog rather than refused.

use crate::admission::{AcceptRate, Admission};
use crate::command::Command;
use crate::config::Config;
use crate::conn::Phase;
use crate::connections::{Connections, CLOSE_TIMEOUT};
use crate::ring::buf_ring::{BufRing, BUFFER_GROUP};
use crate::ring::token::{Op, Token};
use crate::stats::WorkerStats;
use io_uring::types::{CancelBuilder, DestinationSlot, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accepts armed at once per worker. Each completes with one connection;
/// the loop re-arms them in the same batch as everything else.
pub const ACCEPTS: usize = 32;

/// Where one armed accept writes its peer's address.
#[derive(Clone, Copy)]
struct AcceptAddr {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// The peer address an accept wrote, if IPv4 or IPv6.
fn peer_ip(a: &AcceptAddr) -> Option<IpAddr> {
    let storage = &a.addr as *const libc::sockaddr_storage;
    // SAFETY: the kernel wrote a sockaddr of `len` bytes for the family it
    // names; each cast reads only a type that family guarantees.
    let addr = unsafe {
        match i32::from(a.addr.ss_family) {
            libc::AF_INET => {
                let v4 = &*storage.cast::<libc::sockaddr_in>();
                SocketAddr::from((u32::from_be(v4.sin_addr.s_addr).to_be_bytes(), 0))
            }
            libc::AF_INET6 => {
                let v6 = &*storage.cast::<libc::sockaddr_in6>();
                SocketAddr::from((v6.sin6_addr.s6_addr, 0))
            }
            _ => return None,
        }
    };
    Some(addr.ip().to_canonical())
}

/// One worker: its ring, buffers, listener and connections.
pub struct Worker {
    // Field order is drop order: the ring (and its registrations) goes
    // before the buffer memory it points into.
    ring: IoUring,
    bufs: BufRing,
    accept_addrs: Box<[AcceptAddr; ACCEPTS]>,
    /// The listener; `None` once a drain closed it.
    listener: Option<TcpListener>,
    conns: Connections,
    commands: Receiver<Command>,
    wake: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    /// Indexes into `accept_addrs` with no accept armed.
    idle_accepts: Vec<u8>,
    accept_rate: AcceptRate,
    /// Fixed-file slots in the table.
    capacity: u32,
    /// Slots holding a socket: from the accept CQE to the CLOSE CQE.
    slots_in_use: u32,
    /// Connections whose multishot receive stopped on an empty buffer ring.
    starved: Vec<u32>,
    cqes: Vec<(u64, i32, u32)>,
    /// Set by shutdown: exit once every connection is gone or at this time.
    stop_by: Option<Instant>,
}

/// What a worker needs from the runtime.
pub struct Setup {
    /// Worker number, for stats and logs.
    pub index: usize,
    /// Fixed-file table size: this worker's connection capacity.
    pub capacity: u32,
    /// The bound SO_REUSEPORT listener.
    pub listener: TcpListener,
    /// Commands from other threads.
    pub commands: Receiver<Command>,
    /// Eventfd written when a command is sent.
    pub wake: Arc<OwnedFd>,
    /// All workers' counters.
    pub stats: Arc<[WorkerStats]>,
    /// Admission rules and counts shared by every worker.
    pub admission: Arc<Admission>,
    /// This worker's share of `--max-handshakes-per-sec`.
    pub accept_rate: Option<f64>,
}

fn errno(result: i32) -> i32 {
    -result
}

impl Worker {
    /// Sets up the ring, the sparse fixed-file table and the buffer ring.
    ///
    /// # Errors
    /// From ring setup, `IORING_REGISTER_FILES_SPARSE` (`EMFILE` when
    /// `capacity` exceeds RLIMIT_NOFILE), or buffer ring registration.
    pub fn new(config: &Config, setup: Setup) -> io::Result<Self> {
        let (ring, flags) = crate::ring::setup::build_ring()?;
        ring.submitter()
            .register_files_sparse(setup.capacity)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "registering {} fixed-file slots: {e} (is RLIMIT_NOFILE lower?)",
                        setup.capacity
                    ),
                )
            })?;
        let bufs = BufRing::register(&ring, config.read_buffers, config.read_buffer_size)?;
        setup.stats[setup.index].capacity.store(
            u64::from(setup.capacity),
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::debug!(
            worker = setup.index,
            flags,
            capacity = setup.capacity,
            incremental_buffers = bufs.is_incremental(),
            "worker ready"
        );
        let conns = Connections::new(
            config,
            setup.capacity as usize,
            setup.stats,
            setup.index,
            &setup.admission,
        );
        Ok(Self {
            ring,
            bufs,
            // SAFETY: sockaddr_storage is plain data; zero is a valid value.
            accept_addrs: Box::new(unsafe { std::mem::zeroed() }),
            listener: Some(setup.listener),
            conns,
            commands: setup.commands,
            wake: setup.wake,
            wake_buf: Box::new(0),
            idle_accepts: (0..ACCEPTS as u8).rev().collect(),
            accept_rate: AcceptRate::new(setup.accept_rate),
            capacity: setup.capacity,
            slots_in_use: 0,
            starved: Vec::new(),
            cqes: Vec::with_capacity(1024),
            stop_by: None,
        })
    }

    /// Runs the loop until shutdown completes.
    ///
    /// # Errors
    /// An `io_uring_enter(2)` error other than a timeout or interruption.
    pub fn run(mut self) -> io::Result<()> {
        self.arm_accepts();
        self.arm_wake();
        loop {
            let mut wait = self.conns.until_next_tick();
            if let Some(refill) = self.accept_rate.next_in() {
                wait = wait.min(refill);
            }
            let wait = wait.max(Duration::from_millis(1));
            let ts = Timespec::new()
                .sec(wait.as_secs())
                .nsec(wait.subsec_nanos());
            let args = SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                match e.raw_os_error() {
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY) => {}
                    _ => return Err(e),
                }
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(user_data, result, flags) in &cqes {
                self.dispatch(Token::decode(user_data), result, flags);
            }
            cqes.clear();
            self.cqes = cqes;
            self.conns.fire_timers();
            self.rearm_starved();
            self.arm_accepts();
            self.flush();
            if let Some(deadline) = self.stop_by {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    return Ok(());
                }
            }
        }
    }

    /// Queues an SQE, submitting first if the submission queue is full.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every buffer an SQE points to (receive buffers, send
            // queues, the wake buffer) outlives its operation; see each arm.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!("io_uring submit with a full SQ: {e}");
            }
        }
    }

    /// Arms accepts up to [`ACCEPTS`], the free fixed-file slots and the
    /// accept-rate tokens, unless the listener is closed or the worker is
    /// stopping. Connections beyond those wait in the listen backlog.
    fn arm_accepts(&mut self) {
        let Some(listener) = self.listener.as_ref().map(|l| Fd(l.as_raw_fd())) else {
            return; // closed by a drain or shutdown
        };
        let armed = (ACCEPTS - self.idle_accepts.len()) as u32;
        let free = self.capacity - self.slots_in_use - armed;
        let mut allowed = free.min(self.idle_accepts.len() as u32);
        if allowed > 0 {
            allowed = allowed.min(self.accept_rate.available());
        }
        for _ in 0..allowed {
            let index = self.idle_accepts.pop().expect("an idle accept");
            let a = &mut self.accept_addrs[usize::from(index)];
            a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let entry = opcode::Accept::new(listener, (&raw mut a.addr).cast(), &raw mut a.len)
                .file_index(Some(DestinationSlot::auto_target()))
                .build()
                .user_data(Token::accept(u32::from(index)).encode());
            self.accept_rate.take();
            self.push(entry);
        }
    }

    /// Cancels the armed accepts and closes the listener. The cancel is
    /// submitted before the descriptor is closed, so no accept SQE can
    /// name a reused descriptor number.
    fn close_listener(&mut self) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(listener.as_raw_fd())).all())
            .build()
            .user_data(Token::worker(Op::Cancel).encode());
        self.push(entry);
        if let Err(e) = self.ring.submit() {
            tracing::warn!("submitting the accept cancel: {e}");
        }
        drop(listener);
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(Fd(self.wake.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(Token::worker(Op::Wake).encode());
        self.push(entry);
    }

    fn arm_recv(&mut self, slot: u32, gen: u32) {
        self.conns.get(slot, gen).recv_armed = true;
        let entry = opcode::RecvMulti::new(Fixed(slot), BUFFER_GROUP)
            .build()
            .user_data(
                Token {
                    op: Op::Recv,
                    slot,
                    gen,
                }
                .encode(),
            );
        self.push(entry);
    }

    fn dispatch(&mut self, token: Token, result: i32, flags: u32) {
        let (slot, gen) = (token.slot, token.gen);
        match token.op {
            Op::Accept => self.on_accept(slot, result),
            Op::Recv => self.on_recv(slot, gen, result, flags),
            Op::Send => self.conns.on_sent(slot, gen, result),
            Op::Shutdown => self.conns.on_shutdown(slot, gen, result),
            Op::Cancel => {}
            Op::Close => {
                self.slots_in_use -= 1;
                let stats = self.conns.io.stats();
                WorkerStats::sub(&stats.slots_in_use, 1);
            }
            Op::Wake => {
                self.drain_commands();
                self.arm_wake();
            }
        }
        if matches!(token.op, Op::Recv | Op::Send | Op::Shutdown) {
            self.finish_release(slot);
        }
    }

    /// An accept armed with address buffer `index` completed.
    fn on_accept(&mut self, index: u32, result: i32) {
        let index = u8::try_from(index).expect("accept index");
        self.idle_accepts.push(index);
        if result >= 0 {
            let slot = result as u32;
            self.slots_in_use += 1;
            WorkerStats::add(&self.conns.io.stats().slots_in_use, 1);
            assert!(
                self.slots_in_use <= self.capacity,
                "more sockets than fixed-file slots"
            );
            // One that raced a drain's cancel is answered 503 at its
            // handshake.
            let ip = peer_ip(&self.accept_addrs[usize::from(index)]);
            let gen = self.conns.accept(slot, ip);
            self.arm_recv(slot, gen);
        } else if errno(result) != libc::ECANCELED {
            // ENFILE cannot happen (no more accepts than free slots are
            // armed); EMFILE, ENOBUFS and the like are transient.
            tracing::warn!(
                "accept failed: {}",
                io::Error::from_raw_os_error(errno(result))
            );
        }
    }

    fn on_recv(&mut self, slot: u32, gen: u32, result: i32, flags: u32) {
        match result {
            1.. => {
                let bid = cqueue::buffer_select(flags).expect("receive CQE without a buffer");
                // SAFETY: `bid` and `result` come from this CQE, which is
                // marked consumed right after its bytes are handled.
                let data = unsafe { self.bufs.filled(bid, result as usize) };
                self.conns.on_data(slot, gen, data);
                self.bufs
                    .consumed(bid, result as usize, cqueue::buffer_more(flags));
            }
            0 => self.conns.on_eof(slot, gen),
            _ if errno(result) == libc::ENOBUFS => {
                WorkerStats::add(&self.conns.io.stats().buffer_ring_empty, 1);
                self.starved.push(slot);
            }
            _ if errno(result) == libc::ECANCELED => {}
            _ => self.conns.on_eof(slot, gen),
        }
        if !cqueue::more(flags) {
            let conn = self.conns.get(slot, gen);
            conn.recv_armed = false;
            let reading = !matches!(conn.phase, Phase::Releasing);
            if reading && result > 0 {
                // The kernel ended the multishot receive (e.g. CQ overflow).
                self.arm_recv(slot, gen);
            }
        }
    }

    /// Re-arms receives that stopped on ENOBUFS; buffers consumed in this
    /// iteration are back in the ring by now.
    fn rearm_starved(&mut self) {
        for slot in std::mem::take(&mut self.starved) {
            let Some(conn) = self.conns.slot(slot) else {
                continue;
            };
            if !conn.recv_armed && conn.phase != Phase::Releasing {
                let gen = conn.gen;
                self.arm_recv(slot, gen);
            }
        }
    }

    /// Closes a released connection's slot once nothing is in flight.
    fn finish_release(&mut self, slot: u32) {
        let Some(conn) = self.conns.slot(slot) else {
            return;
        };
        if conn.phase == Phase::Releasing && !conn.busy() {
            self.conns.remove(slot);
            self.close_slot(slot);
        }
    }

    fn close_slot(&mut self, slot: u32) {
        let entry = opcode::Close::new(Fixed(slot))
            .build()
            .user_data(Token::worker(Op::Close).encode());
        self.push(entry);
    }

    /// Turns the connection layer's lists into SQEs: one send per
    /// connection with output, shutdowns after final frames, and teardown.
    fn flush(&mut self) {
        let mut flush = std::mem::take(&mut self.conns.io.flush);
        for slot in flush.drain(..) {
            let Some(conn) = self.conns.slot(slot) else {
                continue;
            };
            conn.flush_queued = false;
            if conn.phase == Phase::Releasing || conn.send_in_flight || conn.shutdown_in_flight {
                continue;
            }
            let token = |op| {
                Token {
                    op,
                    slot,
                    gen: conn.gen,
                }
                .encode()
            };
            let entry = if let Some(msg) = conn.out.prepare_send() {
                conn.send_in_flight = true;
                opcode::SendMsg::new(Fixed(slot), msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(token(Op::Send))
            } else if conn.phase == Phase::Closing {
                conn.shutdown_in_flight = true;
                opcode::Shutdown::new(Fixed(slot), libc::SHUT_WR)
                    .build()
                    .user_data(token(Op::Shutdown))
            } else {
                continue;
            };
            self.push(entry);
        }
        self.conns.io.flush = flush;

        let mut release = std::mem::take(&mut self.conns.io.release);
        for slot in release.drain(..) {
            let Some(conn) = self.conns.slot(slot) else {
                continue;
            };
            if conn.busy() && !conn.cancel_sent {
                conn.cancel_sent = true;
                let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fixed(slot)).all())
                    .build()
                    .user_data(Token::worker(Op::Cancel).encode());
                self.push(entry);
            }
            self.finish_release(slot);
        }
        self.conns.io.release = release;
    }

    fn drain_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Publish { topics, frame, ack } => {
                    ack.complete(self.conns.publish(&topics, &frame));
                }
                Command::Broadcast { frame, ack } => ack.complete(self.conns.broadcast(&frame)),
                Command::Drain { period } => self.begin_drain(period),
                Command::Rebalance { fraction, period } => {
                    if self.stop_by.is_none() {
                        self.conns
                            .close_spread(fraction, period, "rebalancing", false);
                    }
                }
                Command::Shutdown => self.begin_shutdown(),
            }
        }
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
