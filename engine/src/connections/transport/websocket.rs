//! What the three WebSocket transports ([`super::ws`], [`super::v1`],
//! [`super::echo`]) share: the frame decoder fed in place, the inflating
//! of compressed messages, the control frames (ping, pong, close; RFC 6455
//! §5.5), the inflate budget (`--max-inflate-bytes-per-sec`), and the
//! keep-alive. Each transport then says what its text and binary messages
//! mean.

use super::super::compression::{Codec, Deflating, InflateBudget};
use super::super::messages::Action;
use super::super::Connections;
use crate::conn::{Deflate, Endpoint, Route};
use crate::protocol::close::code;
use crate::protocol::decoder::{Message, ProtocolError};
use crate::protocol::frame::{self, OpCode};
use crate::stats::WorkerStats;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Instant;

/// Turns one decoded message into actions (no access to the table here):
/// control frames alike on every WebSocket transport, data messages by
/// the connection's transport. A compressed message arrives here already
/// inflated.
fn on_message(
    route: Route,
    rooms: bool,
    deflating: &mut Deflating,
    message: Message<'_>,
    actions: &mut Vec<Action>,
) {
    let action = match message {
        Message::Ping(p) => Some(Action::Send(frame::encode(OpCode::Pong, p))),
        Message::Pong(_) => None,
        Message::Close(status) => Some(Action::CloseEcho(status)),
        Message::Compressed { .. } => unreachable!("inflated before it gets here"),
        data => match route.endpoint() {
            Endpoint::PubSub => Some(super::ws::on_message(rooms, data)),
            Endpoint::PubSubV1 => Some(super::v1::on_message(data)),
            Endpoint::Echo => Some(super::echo::on_message(route, deflating, data)),
            // SSE and long-poll input never reaches the frame decoder
            // (see `Connections::transport_bytes`).
            Endpoint::Sse | Endpoint::Poll => None,
        },
    };
    actions.extend(action);
}

/// Inflate budgets of connections that sent compressed messages, by slot
/// (see [`InflateBudget`]).
pub(super) type Budgets = HashMap<u32, InflateBudget>;

impl Connections {
    /// Frames received on a WebSocket connection: decoded in the kernel's
    /// buffer, then applied in order.
    pub(in crate::connections) fn on_frames(&mut self, slot: u32, data: &mut [u8]) {
        let rooms = self.rooms_on();
        let conn = self.table.get_mut(slot).expect("live slot");
        let mut decoder = std::mem::take(&mut conn.decoder);
        let mut actions = std::mem::take(&mut self.actions);
        let route = conn.route.expect("an open connection has a route");
        let max = self.io.limits.max_message;
        let mut messages = 0u64;
        let Codec {
            inflating,
            deflating,
        } = &mut self.io.codec;
        let deflate = route.deflate() != Deflate::Off;
        let per_sec = self.io.limits.max_inflate_per_sec;
        let budgets = &mut self.transports.inflate;
        let mut over_budget = false;
        let fed = decoder.feed(data, max, deflate, &mut |m| {
            let m = match m {
                Message::Compressed { text, payload } => {
                    let inflated = inflating.message(text, payload, max);
                    // A failed inflate (1009) cost up to `max` bytes' work.
                    let cost = match &inflated {
                        Ok(Message::Text(t)) => t.len(),
                        Ok(Message::Binary(b)) => b.len(),
                        _ => max,
                    };
                    if per_sec > 0 {
                        let now = Instant::now();
                        let budget = budgets
                            .entry(slot)
                            .or_insert_with(|| InflateBudget::new(per_sec, now));
                        if !budget.charge(per_sec, cost, now) {
                            over_budget = true;
                            actions.push(Action::Fail(ProtocolError {
                                code: code::POLICY_VIOLATION,
                                reason: "inflating over the budget",
                            }));
                            return ControlFlow::Break(());
                        }
                    }
                    match inflated {
                        Ok(m) => m,
                        Err(e) => {
                            actions.push(Action::Fail(e));
                            return ControlFlow::Break(());
                        }
                    }
                }
                m => m,
            };
            messages += u64::from(matches!(m, Message::Text(_) | Message::Binary(_)));
            on_message(route, rooms, deflating, m, &mut actions);
            ControlFlow::Continue(())
        });
        conn.decoder = decoder;
        WorkerStats::add(&self.io.stats().messages_in, messages);
        if over_budget {
            tracing::debug!(slot, "inflating past --max-inflate-bytes-per-sec");
            WorkerStats::add(&self.io.stats().inflate_budget_closes, 1);
        }
        if let Err(e) = fed {
            tracing::debug!(slot, code = e.code, reason = e.reason, "protocol error");
            actions.push(Action::Fail(e));
        }
        for action in actions.drain(..) {
            self.apply(slot, action);
        }
        self.actions = actions;
    }
}
