//! A connection's life: the SOCKET, BIND and CONNECT chain into a
//! fixed-file slot at the planned rate, the upgrade request, the
//! multishot receive, sends, and the count and close of a failure or loss.

use super::sqe::{errno_text, push, token, Op, RawAddr};
use super::{Clients, MAX_CONNECTING};
use crate::load::conn::{now_us, Conn, State};
use io_uring::types::{CancelBuilder, DestinationSlot, Fixed};
use io_uring::{opcode, squeue, IoUring};
use ringcast_engine::uring::BUFFER_GROUP;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Clients {
    /// Starts the connections due by `elapsed` at this worker's share of
    /// the planned rate.
    pub(super) fn open_due(&mut self, ring: &mut IoUring, elapsed: Duration) {
        let rate = f64::from(self.setup.plan.rate.max(1)) / self.setup.workers as f64;
        let due = ((elapsed.as_secs_f64() * rate) as usize + 1).min(self.setup.quota);
        while self.started < due && self.connecting < MAX_CONNECTING {
            self.open(ring);
        }
    }

    pub(super) fn open(&mut self, ring: &mut IoUring) {
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

    pub(super) fn on_connect(&mut self, ring: &mut IoUring, slot: u32, result: i32) {
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

    pub(super) fn arm_recv(&mut self, ring: &mut IoUring, slot: u32) {
        let gen = self.conns[slot as usize].gen;
        let recv = opcode::RecvMulti::new(Fixed(slot), BUFFER_GROUP)
            .build()
            .user_data(token(Op::Recv, gen, 0, slot));
        push(ring, recv);
    }

    pub(super) fn send(
        &mut self,
        ring: &mut IoUring,
        slot: u32,
        ptr: *const u8,
        len: usize,
        aux: u16,
    ) {
        let gen = self.conns[slot as usize].gen;
        let send = opcode::Send::new(Fixed(slot), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
            .user_data(token(Op::Send, gen, aux, slot));
        push(ring, send);
    }

    /// Sends bytes built for this connection alone (a pong, a handshake
    /// with its own token).
    pub(super) fn send_owned(&mut self, ring: &mut IoUring, slot: u32, frame: Vec<u8>) {
        if self.owned.len() >= usize::from(u16::MAX) {
            return; // 65535 replies in flight: this one is skipped
        }
        let key = self.owned.insert(frame);
        let (ptr, len) = (self.owned[key].as_ptr(), self.owned[key].len());
        self.send(ring, slot, ptr, len, key as u16 + 1);
    }

    /// Counts a connection that failed before it opened.
    pub(super) fn fail(&mut self, reason: String) {
        self.shared().failed.fetch_add(1, Ordering::Relaxed);
        *self.report.failures.entry(reason).or_default() += 1;
    }

    /// Counts an open connection that was lost (or a handshake that
    /// failed) and closes it.
    pub(super) fn lose(&mut self, ring: &mut IoUring, slot: u32, reason: String) {
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
    pub(super) fn close(&mut self, ring: &mut IoUring, slot: u32) {
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

    pub(super) fn release(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        debug_assert_eq!(conn.state, State::Closing);
        conn.state = State::Free;
        conn.gen = conn.gen.wrapping_add(1);
        self.free.push(slot);
    }
}
