//! The ring loop of one worker thread.
//!
//! Each iteration: submit the SQEs queued since the last one and wait for
//! at least one CQE (or the next timer tick); dispatch every CQE; fire due
//! timers; then turn the connection layer's flush and release lists into
//! SQEs. Those SQEs go to the kernel in one `io_uring_enter` at the top of
//! the next iteration, so a broadcast to N subscribers is one batch.
//!
//! The worker counts the operations in flight (SQEs whose last CQE has not
//! arrived). When it stops, it cancels them all and reaps every CQE before
//! the ring, the buffer ring and the send queues are dropped, so the
//! kernel never writes to or reads from freed memory, even in a program
//! that embeds the engine and goes on running.

mod accept;
mod commands;

use crate::admission::{AcceptRate, Admission};
use crate::command::{Command, Wake};
use crate::config::Config;
use crate::conn::{Flag, Phase};
use crate::connections::Connections;
use crate::outbound::SendBuf;
use crate::ring::buf_ring::{BufRing, BUFFER_GROUP};
use crate::ring::token::{Op, Token};
use crate::stats::WorkerStats;
use accept::Accepts;
use io_uring::types::{CancelBuilder, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a stopping worker waits for its cancelled operations' CQEs.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// One worker: its ring, buffers, listener and connections.
pub struct Worker {
    // Field order is drop order: the ring (and its registrations) goes
    // before the buffer memory it points into.
    ring: IoUring,
    bufs: BufRing,
    accepts: Accepts,
    /// The listener; `None` once a drain closed it.
    listener: Option<TcpListener>,
    conns: Connections,
    commands: Receiver<Command>,
    wake: Arc<Wake>,
    wake_buf: Box<u64>,
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
    /// SQEs pushed whose last CQE has not arrived.
    in_flight: usize,
    /// Copy each published frame into this worker's own buffer, so its
    /// reference count is touched by this thread only (several workers).
    copy_frames: bool,
    /// This worker's number.
    index: usize,
}

/// What a worker needs from the runtime.
pub struct Setup {
    /// Worker number, for stats and logs.
    pub index: usize,
    /// Workers in the process.
    pub workers: usize,
    /// Fixed-file table size: this worker's connection capacity.
    pub capacity: u32,
    /// The bound SO_REUSEPORT listener.
    pub listener: TcpListener,
    /// Commands from other threads.
    pub commands: Receiver<Command>,
    /// Eventfd written when a command is sent.
    pub wake: Arc<Wake>,
    /// All workers' counters.
    pub stats: Arc<[WorkerStats]>,
    /// The runtime's handle, set once every worker is started: a client
    /// publish with no hook and no broker is published through it from
    /// the worker, with no hand-off to the embedding program.
    pub handle: Arc<std::sync::OnceLock<crate::Handle>>,
    /// Admission rules and counts shared by every worker.
    pub admission: Arc<Admission>,
    /// This worker's share of `--max-handshakes-per-sec`.
    pub accept_rate: Option<f64>,
    /// History shared by every worker and the publishers.
    pub hub: Arc<crate::hub::Hub>,
}

impl Worker {
    /// Sets up the ring, the sparse fixed-file table and the buffer ring.
    ///
    /// # Errors
    /// From ring setup, the probe of the kernel's io_uring features,
    /// `IORING_REGISTER_FILES_SPARSE` (`EMFILE` when `capacity` exceeds
    /// RLIMIT_NOFILE), or buffer ring registration.
    pub fn new(config: &Config, setup: Setup) -> io::Result<Self> {
        let (ring, flags) = crate::ring::setup::build_ring()?;
        crate::ring::setup::probe(&ring)?;
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
            cq_entries = ring.params().cq_entries(),
            incremental_buffers = bufs.is_incremental(),
            "worker ready"
        );
        let conns = Connections::new(
            config,
            setup.capacity as usize,
            setup.stats,
            setup.index,
            &setup.admission,
            setup.hub,
            setup.handle,
        );
        Ok(Self {
            ring,
            bufs,
            accepts: Accepts::new(),
            listener: Some(setup.listener),
            conns,
            commands: setup.commands,
            wake: setup.wake,
            wake_buf: Box::new(0),
            accept_rate: AcceptRate::new(setup.accept_rate),
            capacity: setup.capacity,
            slots_in_use: 0,
            starved: Vec::new(),
            cqes: Vec::with_capacity(1024),
            stop_by: None,
            in_flight: 0,
            copy_frames: setup.workers > 1,
            index: setup.index,
        })
    }

    /// Runs the loop until shutdown completes, then cancels and reaps every
    /// operation still in flight.
    ///
    /// # Errors
    /// An `io_uring_enter(2)` error other than a timeout or interruption.
    pub fn run(mut self) -> io::Result<()> {
        self.arm_accepts();
        self.arm_wake();
        let outcome = loop {
            let mut wait = self.conns.until_next_tick();
            if let Some(refill) = self.accept_rate.next_in() {
                wait = wait.min(refill);
            }
            if let Some(until) = self.accepts.paused_until() {
                wait = wait.min(until.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = self.submit_and_wait(wait) {
                break Err(e);
            }
            self.reap(Self::dispatch);
            self.conns.fire_timers();
            self.rearm_starved();
            self.arm_accepts();
            self.flush();
            self.publish_in_flight();
            if let Some(deadline) = self.stop_by {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    break Ok(());
                }
            }
        };
        self.quiesce();
        outcome
    }

    /// Submits what is queued and waits up to `wait` (at least 1 ms) for a
    /// CQE.
    fn submit_and_wait(&mut self, wait: Duration) -> io::Result<()> {
        let wait = wait.max(Duration::from_millis(1));
        let ts = Timespec::new()
            .sec(wait.as_secs())
            .nsec(wait.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Err(e)
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// Hands every CQE waiting to `handle`, counting finished operations.
    fn reap(&mut self, handle: fn(&mut Self, Token, i32, u32)) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(user_data, result, flags) in &cqes {
            let token = Token::decode(user_data);
            // A multishot receive's CQEs carry F_MORE until its last.
            if token.op != Op::Recv || !cqueue::more(flags) {
                self.in_flight -= 1;
            }
            handle(self, token, result, flags);
        }
        cqes.clear();
        self.cqes = cqes;
    }

    /// Cancels every operation in flight and reaps their CQEs, then
    /// removes the connections left and closes their slots, for at most
    /// [`QUIESCE_TIMEOUT`]. If some operations never complete, the
    /// worker's memory is leaked on purpose rather than freed under the
    /// kernel.
    fn quiesce(mut self) {
        self.close_listener();
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(Token::worker(Op::Cancel).encode());
        self.push(entry);
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        self.reap_all(deadline);
        if self.in_flight == 0 {
            for slot in self.conns.slots() {
                self.conns.remove(slot);
                self.close_slot(slot);
            }
            self.reap_all(deadline);
        }
        self.publish_in_flight();
        if self.in_flight > 0 {
            tracing::error!(
                operations = self.in_flight,
                "io_uring operations did not complete after cancellation; \
                 leaking the worker's buffers instead of freeing them under the kernel"
            );
            std::mem::forget(self);
        }
    }

    /// Reaps CQEs with [`Self::settle`] until nothing is in flight or
    /// `deadline` passes.
    fn reap_all(&mut self, deadline: Instant) {
        while self.in_flight > 0 && Instant::now() < deadline {
            if let Err(e) = self.submit_and_wait(Duration::from_millis(100)) {
                tracing::error!("io_uring_enter while stopping: {e}");
                return;
            }
            self.reap(Self::settle);
        }
    }

    fn publish_in_flight(&self) {
        let gauge = &self.conns.io.stats().operations_in_flight;
        gauge.store(self.in_flight as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Accounts for a CQE while stopping: the kernel is done with what it
    /// pointed to; nothing is re-armed.
    fn settle(&mut self, token: Token, result: i32, flags: u32) {
        let (slot, gen) = (token.slot, token.gen);
        match token.op {
            Op::Accept => {
                self.accepts.completed(token.slot);
                if result >= 0 {
                    self.slot_taken();
                    self.close_slot(result as u32);
                }
            }
            Op::Send => self.conns.get(slot, gen).out.abandon_send(),
            Op::Recv if !cqueue::more(flags) => {
                self.conns.get(slot, gen).set(Flag::RecvArmed, false)
            }
            Op::Shutdown => self.conns.get(slot, gen).set(Flag::ShutdownInFlight, false),
            Op::Close => self.slot_freed(),
            Op::Recv | Op::Cancel | Op::Wake => {}
        }
    }

    /// Queues an SQE, submitting first if the submission queue is full.
    fn push(&mut self, entry: squeue::Entry) {
        self.in_flight += 1;
        loop {
            // SAFETY: every buffer an SQE points to (receive buffers, send
            // queues, the wake buffer, accept addresses) outlives its
            // operation: the worker reaps every CQE before dropping them.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!("io_uring submit with a full SQ: {e}");
            }
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
        let entry = opcode::Read::new(Fd(self.wake.fd.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(Token::worker(Op::Wake).encode());
        self.push(entry);
    }

    fn arm_recv(&mut self, slot: u32, gen: u32) {
        self.conns.get(slot, gen).set(Flag::RecvArmed, true);
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
            Op::Close => self.slot_freed(),
            Op::Wake => {
                self.drain_commands();
                self.arm_wake();
            }
        }
        if matches!(token.op, Op::Recv | Op::Send | Op::Shutdown) {
            self.finish_release(slot);
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
            _ if -result == libc::ENOBUFS => {
                WorkerStats::add(&self.conns.io.stats().buffer_ring_empty, 1);
                self.starved.push(slot);
            }
            _ if -result == libc::ECANCELED => {}
            _ => self.conns.on_eof(slot, gen),
        }
        if !cqueue::more(flags) {
            let conn = self.conns.get(slot, gen);
            conn.set(Flag::RecvArmed, false);
            let reading = !matches!(conn.phase(), Phase::Releasing);
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
            if !conn.has(Flag::RecvArmed) && conn.phase() != Phase::Releasing {
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
        if conn.phase() == Phase::Releasing && !conn.busy() {
            self.conns.remove(slot);
            self.close_slot(slot);
        }
    }

    /// An accept installed a socket in a fixed-file slot.
    fn slot_taken(&mut self) {
        self.slots_in_use += 1;
        WorkerStats::add(&self.conns.io.stats().slots_in_use, 1);
        assert!(
            self.slots_in_use <= self.capacity,
            "more sockets than fixed-file slots"
        );
    }

    /// A slot's close completed.
    fn slot_freed(&mut self) {
        self.slots_in_use -= 1;
        WorkerStats::sub(&self.conns.io.stats().slots_in_use, 1);
    }

    fn close_slot(&mut self, slot: u32) {
        let entry = opcode::Close::new(Fixed(slot))
            .build()
            .user_data(Token::worker(Op::Close).encode());
        self.push(entry);
    }

    /// Turns the connection layer's lists into SQEs: one send per
    /// connection with output (`IORING_OP_SEND` for one frame, `SENDMSG`
    /// for several), shutdowns after final frames, and teardown.
    fn flush(&mut self) {
        let mut flush = std::mem::take(&mut self.conns.io.flush);
        for slot in flush.drain(..) {
            let Some(conn) = self.conns.slot(slot) else {
                continue;
            };
            conn.set(Flag::FlushQueued, false);
            if conn.phase() == Phase::Releasing
                || conn.out.in_flight()
                || conn.has(Flag::ShutdownInFlight)
            {
                continue;
            }
            let gen = conn.gen;
            let token = |op| Token { op, slot, gen }.encode();
            let entry = match conn.out.start_send() {
                Some(SendBuf::One { ptr, len }) => opcode::Send::new(Fixed(slot), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(token(Op::Send)),
                Some(SendBuf::Gather(msg)) => opcode::SendMsg::new(Fixed(slot), msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(token(Op::Send)),
                None if conn.phase() == Phase::Closing => {
                    conn.set(Flag::ShutdownInFlight, true);
                    opcode::Shutdown::new(Fixed(slot), libc::SHUT_WR)
                        .build()
                        .user_data(token(Op::Shutdown))
                }
                None => continue,
            };
            self.push(entry);
        }
        self.conns.io.flush = flush;

        let mut release = std::mem::take(&mut self.conns.io.release);
        for slot in release.drain(..) {
            let Some(conn) = self.conns.slot(slot) else {
                continue;
            };
            if conn.busy() && !conn.has(Flag::CancelSent) {
                conn.set(Flag::CancelSent, true);
                let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fixed(slot)).all())
                    .build()
                    .user_data(Token::worker(Op::Cancel).encode());
                self.push(entry);
            }
            self.finish_release(slot);
        }
        self.conns.io.release = release;
    }
}
