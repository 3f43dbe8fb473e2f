//! Publish and broadcast: one shared frame queued to many connections, by
//! topic, by user, or to all (or its compressed twin to those that
//! negotiated permessage-deflate); and closing every connection of some
//! users.

use super::recovery::Resumes;
use super::transport::{self, Delivery, Encodings, Reach};
use super::Connections;
use crate::conn::{Conn, Phase};
use crate::delivery::{Frames, TopicFrame};
use crate::stats::WorkerStats;
use crate::topics::TopicId;
use bytes::Bytes;

/// One publish as a worker applies it (see [`Connections::publish`]).
#[derive(Clone, Copy)]
pub struct Fanout<'a> {
    /// Topic names.
    pub topics: &'a [String],
    /// User ids.
    pub users: &'a [String],
    /// The raw-mode frames (plain, and compressed for permessage-deflate).
    pub frames: &'a Frames,
    /// Each topic's `ringcast.v1` delivery, in the order of `topics`.
    pub v1: &'a [TopicFrame],
    /// The `ringcast.v1` frames for connections reached as a user's.
    pub direct: &'a Frames,
    /// (slot, generation) of a connection that gets nothing (the sender
    /// of a client publish with echo off).
    pub skip: Option<(u32, u32)>,
}

impl Connections {
    /// Queues one publish on this worker, through one step per connection
    /// ([`Connections::reach`]): each topic's subscribers get the topic's
    /// [`Delivery`], then the connections of `users` that got nothing yet
    /// get it as a user's message. Transports that take a publish per
    /// topic (`ringcast.v1`, SSE, long-poll) get each topic's delivery
    /// (except where a resuming subscription already covers it); raw
    /// WebSocket connections get `frames` once per publish. Frames shared
    /// by the workers are passed through `local` (this worker's copy) at
    /// their first use here. The `skip` connection gets nothing. Returns
    /// how many deliveries were queued.
    pub fn publish(&mut self, publish: &Fanout<'_>, local: impl Fn(&Frames) -> Frames) -> usize {
        let Fanout {
            topics,
            users,
            frames,
            v1,
            direct,
            skip,
        } = *publish;
        let number = self.table.next_delivery();
        // The skipped connection counts as delivered already.
        if let Some((slot, gen)) = skip {
            if let Some(conn) = self.table.get_mut(slot).filter(|c| c.gen == gen) {
                conn.last_delivery = number;
            }
        }
        let mut queued = 0;
        // Each topic's delivery, then the users' (one more turn).
        let turns = topics.iter().zip(v1).map(Some).chain([None]);
        for turn in turns {
            let (topic, position, v1) = match turn {
                Some((name, tf)) => match self.topics.id(name) {
                    Some(id) => (Some(id), tf.position, &tf.frames),
                    None => continue,
                },
                None if users.is_empty() => break,
                None => (None, None, direct),
            };
            let d = Delivery {
                topic,
                position,
                raw: frames,
                v1,
            };
            let who = match topic {
                Some(id) => Reached::Topic(id),
                None => Reached::Users(users),
            };
            queued += self.reach(&d, who, number, skip, &local);
        }
        self.finish_polls();
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// Queues `frames` to every open connection on the topics endpoint, and
    /// `v1` (passed through `local` once) to those speaking `ringcast.v1`;
    /// SSE streams get `v1`'s JSON as an event.
    pub fn broadcast(
        &mut self,
        frames: &Frames,
        v1: &Frames,
        local: impl Fn(&Frames) -> Frames,
    ) -> usize {
        let d = Delivery {
            topic: None,
            position: None,
            raw: frames,
            v1,
        };
        let number = self.table.next_delivery();
        let queued = self.reach(&d, Reached::All, number, None, &local);
        WorkerStats::add(&self.io.stats().messages_out, queued as u64);
        queued
    }

    /// The fan-out loop: `d` to each connection `who` names, through one
    /// step per connection ([`Fan::step`]) whatever its transport, with
    /// this worker's encodings of `d` made once, on first use. Returns how
    /// many deliveries were queued.
    fn reach(
        &mut self,
        d: &Delivery<'_>,
        who: Reached<'_>,
        number: u32,
        skip: Option<(u32, u32)>,
        local: &dyn Fn(&Frames) -> Frames,
    ) -> usize {
        let mut encodings = Encodings::default();
        let mut reach = Reach {
            io: &mut self.io,
            transports: &mut self.transports,
            topics: &self.topics,
            local,
        };
        let resumes = &mut self.resumes;
        let mut visit = |slot, conn: &mut Conn| {
            let fan = Fan {
                number,
                skip,
                resumes: &mut *resumes,
            };
            usize::from(fan.step(conn, slot, d, &mut encodings, &mut reach))
        };
        let table = &mut self.table;
        let mut queued = 0;
        let mut by_slot = |slot| {
            let conn = table.get_mut(slot).expect("reached slot is live");
            queued += visit(slot, conn);
        };
        match who {
            Reached::Topic(id) => self.topics.members(id).for_each(&mut by_slot),
            Reached::Users(users) => users
                .iter()
                .flat_map(|user| self.sessions.user_slots(user))
                .for_each(&mut by_slot),
            Reached::All => table.for_each(|slot, conn| queued += visit(slot, conn)),
        }
        queued
    }

    /// Starts closing every open connection of any of `users` with `code`
    /// and `reason`. Returns how many it closes.
    pub fn disconnect(&mut self, users: &[String], code: u16, reason: &str) -> usize {
        let (table, io) = (&mut self.table, &mut self.io);
        let mut closed = 0;
        for slot in users.iter().flat_map(|user| self.sessions.user_slots(user)) {
            let conn = table.get_mut(slot).expect("user slot is live");
            if conn.phase() == Phase::Open {
                io.close(conn, slot, Some(code), reason);
                closed += 1;
            }
        }
        closed
    }

    /// Queues `frame` to the open connection in `slot` if its generation
    /// is `gen` (an answer to an upstream event).
    pub fn reply_frame(&mut self, slot: u32, gen: u32, frame: Bytes) {
        if let Some(conn) = self.table.get_mut(slot).filter(|c| c.gen == gen) {
            self.io.queue(conn, slot, frame);
        }
    }

    /// Open connections of `user` on this worker.
    pub fn user_connections(&mut self, user: &str) -> usize {
        let table = &mut self.table;
        self.sessions
            .user_slots(user)
            .filter(|&slot| {
                table
                    .get_mut(slot)
                    .is_some_and(|c| c.phase() == Phase::Open)
            })
            .count()
    }
}

/// The connections a delivery reaches.
enum Reached<'a> {
    /// A topic's subscribers.
    Topic(TopicId),
    /// The connections of these users.
    Users(&'a [String]),
    /// Every connection.
    All,
}

/// What a publish's fan-out step needs beside the connection.
struct Fan<'a> {
    /// This publish's number on the worker (see `Conn::last_delivery`).
    number: u32,
    /// (slot, generation) of the connection that gets nothing.
    skip: Option<(u32, u32)>,
    resumes: &'a mut Resumes,
}

impl Fan<'_> {
    /// One connection's step of a publish's fan-out, whatever its
    /// transport: once per publish (or per topic for transports that take
    /// a publish per topic), never to the `skip` connection, held or
    /// skipped where a resuming subscription covers it; then its transport
    /// encodes and queues it. Returns whether it was queued.
    fn step(
        self,
        conn: &mut Conn,
        slot: u32,
        d: &Delivery<'_>,
        encodings: &mut Encodings,
        reach: &mut Reach<'_>,
    ) -> bool {
        let Some(endpoint) = conn.endpoint() else {
            return false;
        };
        let per_topic = d.topic.is_some() && transport::per_topic(endpoint);
        if self.skip == Some((slot, conn.gen)) || (!per_topic && conn.last_delivery == self.number)
        {
            return false;
        }
        conn.last_delivery = self.number;
        if let Some(topic) = d.topic.filter(|_| transport::resumes(endpoint)) {
            // Held while the broker reads the topic for this subscription:
            // sent plain, after the replay.
            let resumes = self.resumes;
            let held = resumes
                .held
                .hold(topic, slot, d.position, || d.v1.plain.clone());
            if held || resumes.skips.covers(topic, slot, d.position) {
                return false;
            }
        }
        reach.deliver(conn, slot, d, encodings)
    }
}
