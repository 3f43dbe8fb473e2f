//! The ring loop of one worker thread.
//!
//! Each iteration: submit the SQEs queued since the last one and wait for
//! at least one CQE (or the next timer tick); dispatch every CQE; fire due
//! timers; then turn the connection layer's flush and release lists into
//! SQEs. Those SQEs go to the kernel in one `io_uring_enter` at the top of
//! the next iteration, so a broadcast to N subscribers is one batch.

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
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Free fixed-file slots below which connections are accepted one at a time.
///
/// A multishot accept keeps accepting while connections are queued. Once the
/// table is full, the kernel has already taken the next connection off the
/// backlog when the slot install fails (ENFILE), and it resets that
/// connection. Near the limit, single-shot accepts take exactly as many
/// connections as there are free slots. The rest wait in the listen backlog
/// until a slot is closed.
const SINGLE_ACCEPT_BELOW: u32 = 64;

/// The listener's accept request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accepting {
    /// None armed: the table is full, or the worker is stopping.
    Idle,
    /// A single-shot accept is armed (few free slots).
    Single,
    /// A multishot accept is armed; `cancelling` once free slots ran low.
    Multishot { cancelling: bool },
}

/// One worker: its ring, buffers, listener and connections.
pub struct Worker {
    // Field order is drop order: the ring (and its registrations) goes
    // before the buffer memory it points into.
    ring: IoUring,
    bufs: BufRing,
    listener: TcpListener,
    conns: Connections,
    commands: Receiver<Command>,
    wake: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    accepting: Accepting,
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
        Ok(Self {
            ring,
            bufs,
            listener: setup.listener,
            conns: Connections::new(config, setup.capacity as usize, setup.stats, setup.index),
            commands: setup.commands,
            wake: setup.wake,
            wake_buf: Box::new(0),
            accepting: Accepting::Idle,
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
        self.arm_accept();
        self.arm_wake();
        loop {
            let wait = self.conns.until_next_tick().max(Duration::from_millis(1));
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

    /// Arms an accept suited to the free slots, unless one is armed, the
    /// table is full (connections then wait in the backlog), or the worker
    /// is stopping.
    fn arm_accept(&mut self) {
        let free = self.capacity - self.slots_in_use;
        if self.accepting != Accepting::Idle || free == 0 || self.stop_by.is_some() {
            return;
        }
        let listener = Fd(self.listener.as_raw_fd());
        let (entry, mode) = if free > SINGLE_ACCEPT_BELOW {
            let entry = opcode::AcceptMulti::new(listener)
                .allocate_file_index(true)
                .build();
            (entry, Accepting::Multishot { cancelling: false })
        } else {
            let entry = opcode::Accept::new(listener, std::ptr::null_mut(), std::ptr::null_mut())
                .file_index(Some(DestinationSlot::auto_target()))
                .build();
            (entry, Accepting::Single)
        };
        self.push(entry.user_data(Token::worker(Op::Accept).encode()));
        self.accepting = mode;
    }

    fn cancel_accept(&mut self) {
        let entry = opcode::AsyncCancel::new(Token::worker(Op::Accept).encode())
            .build()
            .user_data(Token::worker(Op::Cancel).encode());
        self.push(entry);
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
            Op::Accept => self.on_accept(result, flags),
            Op::Recv => self.on_recv(slot, gen, result, flags),
            Op::Send => self.conns.on_sent(slot, gen, result),
            Op::Shutdown => self.conns.on_shutdown(slot, gen, result),
            Op::Cancel => {}
            Op::Close => {
                self.slots_in_use -= 1;
                self.arm_accept();
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

    fn on_accept(&mut self, result: i32, flags: u32) {
        if result >= 0 {
            let slot = result as u32;
            self.slots_in_use += 1;
            assert!(
                self.slots_in_use <= self.capacity,
                "more sockets than fixed-file slots"
            );
            if self.stop_by.is_some() {
                self.close_slot(slot);
            } else {
                let gen = self.conns.accept(slot);
                self.arm_recv(slot, gen);
            }
        } else if errno(result) == libc::ENFILE {
            tracing::warn!(
                capacity = self.capacity,
                "fixed-file table full during a burst: one connection was refused"
            );
        } else if errno(result) != libc::ECANCELED {
            tracing::warn!(
                "accept failed: {}",
                io::Error::from_raw_os_error(errno(result))
            );
        }
        if !cqueue::more(flags) {
            self.accepting = Accepting::Idle;
            self.arm_accept();
        } else if self.accepting == (Accepting::Multishot { cancelling: false })
            && self.capacity - self.slots_in_use <= SINGLE_ACCEPT_BELOW
        {
            // Few slots left: stop the multishot; its last CQE re-arms
            // in single-shot mode.
            self.accepting = Accepting::Multishot { cancelling: true };
            self.cancel_accept();
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
                Command::Shutdown => self.begin_shutdown(),
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.stop_by.is_some() {
            return;
        }
        self.stop_by = Some(Instant::now() + CLOSE_TIMEOUT + Duration::from_secs(1));
        if matches!(
            self.accepting,
            Accepting::Multishot { cancelling: false } | Accepting::Single
        ) {
            self.cancel_accept();
        }
        self.conns.shutdown();
    }
}
