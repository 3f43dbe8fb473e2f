//! Starting the workers, and the [`Handle`] other threads use to publish,
//! reach users, drain and rebalance.

mod presence;

use crate::admission::Admission;
use crate::capacity::table_size;
use crate::command::{Ack, Command, Mailbox, Wake};
use crate::config::Config;
use crate::delivery::{Frames, TopicFrame};
use crate::hub::epoch::Epoch;
use crate::hub::{Hub, Page};
use crate::protocol::deflate::{Deflater, FULL_WINDOW_BITS};
use crate::protocol::frame::{self, OpCode};
use crate::protocol::v1::{self, Content, Data, Position};
use crate::stats::{self, Snapshot, WorkerStats};
use crate::upstream::Origin;
use crate::worker::{Setup, Worker};
use bytes::Bytes;
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running engine: worker threads, each with its own ring and listener.
pub struct Runtime {
    handle: Handle,
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addr: SocketAddr,
    capacity: u64,
    nofile: u64,
}

/// What one publish sends every worker beside its frames, positions
/// already assigned.
struct Fanout {
    topics: Arc<[String]>,
    users: Arc<[String]>,
    /// The `ringcast.v1` frame of each topic, with its position.
    v1: Arc<[TopicFrame]>,
    /// The `ringcast.v1` frame to users' connections.
    direct: Arc<Frames>,
    /// The sending connection, when it gets no echo.
    skip: Option<Origin>,
}

/// A cheap, cloneable handle for other threads: publish, broadcast, stats,
/// drain, rebalance and shutdown.
#[derive(Clone)]
pub struct Handle {
    mailboxes: Arc<[Mailbox]>,
    stats: Arc<[WorkerStats]>,
    admission: Arc<Admission>,
    hub: Arc<Hub>,
    /// `--compression-min-size` while compression is on.
    compression_min_size: Option<usize>,
}

thread_local! {
    /// The publishing thread's compressor: a publish is compressed once,
    /// here, on the thread that calls [`Handle::publish`] (the server's
    /// API thread), never per worker or per subscriber. Allocated on the
    /// thread's first compressed publish.
    static PUBLISH_DEFLATER: RefCell<Deflater> = RefCell::new(Deflater::new(FULL_WINDOW_BITS));
}

/// Who sent a message published for a client ([`Handle::publish_as`]).
#[derive(Clone, Debug, Default)]
pub struct Sender {
    /// The sender's user id (`sub`): `ringcast.v1` deliveries carry it as
    /// `from`.
    pub user: Option<String>,
    /// A connection that gets no delivery of it (the sender, echo off).
    pub skip: Option<Origin>,
}

impl Runtime {
    /// Binds a listener per worker (SO_REUSEPORT, same address), starts
    /// the workers and waits until each has its ring set up.
    ///
    /// # Errors
    /// Binding the address (e.g. `EADDRINUSE`), raising RLIMIT_NOFILE,
    /// creating eventfds, or any worker's ring setup; on error no worker is
    /// left running.
    pub fn start(config: Config) -> io::Result<Self> {
        let workers = config.workers.max(1);
        let nofile = crate::capacity::raise_nofile_limit()?;
        let per_worker = table_size(workers, config.max_connections, nofile);
        let first = crate::ring::listener::bind(config.listen)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(crate::ring::listener::bind(local_addr)?);
        }
        let stats: Arc<[WorkerStats]> = (0..workers).map(|_| WorkerStats::default()).collect();
        let admission = Arc::new(Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.trusted_proxies.clone(),
            &config.allowed_origins,
        ));
        let accept_rate = config.max_handshakes_per_sec.map(|r| r / workers as f64);
        let presence = crate::hub::presence::Presence::new(
            config.presence.clone(),
            config.presence_join_leave_max,
        );
        let hub = Arc::new(Hub::new(
            config.history.clone(),
            config.history_max_bytes,
            presence,
        ));
        let config = Arc::new(config);
        let own_handle = Arc::new(std::sync::OnceLock::new());
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut mailboxes = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for (index, listener) in listeners.into_iter().enumerate() {
            let wake = Arc::new(Wake::new()?);
            let (tx, commands) = mpsc::channel();
            mailboxes.push(Mailbox {
                tx,
                wake: wake.clone(),
            });
            let setup = Setup {
                index,
                workers,
                capacity: per_worker,
                listener,
                commands,
                wake,
                stats: stats.clone(),
                admission: admission.clone(),
                accept_rate,
                hub: hub.clone(),
                handle: own_handle.clone(),
            };
            let (config, ready) = (config.clone(), ready_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("ringcast-worker-{index}"))
                .spawn(move || match Worker::new(&config, setup) {
                    Ok(worker) => {
                        let _ = ready.send(Ok(()));
                        worker.run()
                    }
                    Err(e) => {
                        let _ = ready.send(Err(io::Error::new(
                            e.kind(),
                            format!("worker {index}: {e}"),
                        )));
                        Ok(())
                    }
                })?;
            threads.push(thread);
        }
        let handle = Handle {
            mailboxes: mailboxes.into(),
            stats,
            admission,
            hub,
            compression_min_size: config.compression.then_some(config.compression_min_size),
        };
        // Workers that find it unset (a client publish in the instant
        // before this) hand the publish upstream, as with a hook.
        let _ = own_handle.set(handle.clone());
        let mut failure = None;
        for _ in 0..workers {
            if let Ok(Err(e)) = ready_rx.recv() {
                failure.get_or_insert(e);
            }
        }
        let runtime = Self {
            handle,
            threads,
            local_addr,
            capacity: u64::from(per_worker) * workers as u64,
            nofile,
        };
        if let Some(e) = failure {
            runtime.handle.shutdown();
            let _ = runtime.wait();
            return Err(e);
        }
        Ok(runtime)
    }

    /// A handle for publishing from other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The address the listeners are bound to (the real port if 0 was
    /// asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections the process can hold: the sum of the workers'
    /// fixed-file tables.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// RLIMIT_NOFILE after raising the soft limit to the hard one: the cap
    /// on each worker's fixed-file table.
    pub fn rlimit_nofile(&self) -> u64 {
        self.nofile
    }

    /// Waits for every worker to exit (after [`Handle::shutdown`]).
    ///
    /// # Errors
    /// The first error a worker's loop returned.
    pub fn wait(self) -> io::Result<()> {
        let mut result = Ok(());
        for thread in self.threads {
            let outcome = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("worker panicked")));
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

impl Handle {
    /// The frames of one published message: the plain frame, and the
    /// compressed one (RFC 7692 §7.2.1, no context takeover) when
    /// compression is on, the payload is at least `--compression-min-size`
    /// bytes and shrinks, and some connection negotiated permessage-deflate.
    fn frames(&self, opcode: OpCode, payload: &[u8]) -> Frames {
        Frames {
            plain: frame::encode(opcode, payload),
            deflated: self.deflated(opcode, payload),
        }
    }

    /// [`Handle::frames`] for a `ringcast.v1` text frame already encoded.
    fn v1_frames(&self, plain: Bytes) -> Frames {
        Frames {
            deflated: self.deflated(OpCode::Text, frame::server_payload(&plain)),
            plain,
        }
    }

    fn deflated(&self, opcode: OpCode, payload: &[u8]) -> Option<Bytes> {
        let negotiated = || {
            self.stats
                .iter()
                .any(|w| w.compressed_connections.load(Ordering::Relaxed) > 0)
        };
        match self.compression_min_size {
            Some(min_size) if payload.len() >= min_size && negotiated() => {
                PUBLISH_DEFLATER.with_borrow_mut(|d| d.frame(opcode, payload, min_size))
            }
            _ => None,
        }
    }

    fn send_all(
        &self,
        make: impl Fn(Arc<Ack>) -> Command,
        done: impl FnOnce(usize) + Send + 'static,
    ) {
        let ack = Ack::new(self.mailboxes.len(), done);
        for mailbox in self.mailboxes.iter() {
            if mailbox.send(make(ack.clone())).is_err() {
                ack.complete(0); // that worker has exited
            }
        }
    }

    /// Publishes one message to every subscriber of any of `topics`
    /// (repeated names count once) and every connection of any of `users`.
    /// A raw-mode connection receives it once whatever the number of its
    /// topics; a `ringcast.v1` connection once per topic, each delivery
    /// with that topic's offset and epoch when it keeps history (see
    /// [`Hub::publish`]), or once as a message without topic when it is
    /// only reached as a user's. Each frame is encoded once here, and
    /// compressed once here for the connections that negotiated
    /// permessage-deflate; with several workers, each copies the frames
    /// once into its own buffers, which its subscribers' queues share.
    /// `payload` must pass [`Content::check`]. `done` is called, on a
    /// worker thread, with the number of deliveries queued once every
    /// worker has queued it. Messages from one caller are delivered in call
    /// order, and a topic's messages in offset order whatever the callers.
    /// Returns the offset given to each topic that keeps history.
    pub fn publish(
        &self,
        topics: Vec<String>,
        users: Vec<String>,
        content: Content,
        payload: &[u8],
        done: impl FnOnce(usize) + Send + 'static,
    ) -> Vec<(String, u64)> {
        self.publish_as(topics, users, content, payload, &Sender::default(), done)
    }

    /// [`Handle::publish`] for a message a client sent: `ringcast.v1`
    /// deliveries carry `"from":"<user>"` when `sender` has a user, and
    /// the sending connection `sender.skip` gets none (echo off).
    pub fn publish_as(
        &self,
        topics: Vec<String>,
        users: Vec<String>,
        content: Content,
        payload: &[u8],
        sender: &Sender,
        done: impl FnOnce(usize) + Send + 'static,
    ) -> Vec<(String, u64)> {
        let mut unique: Vec<String> = Vec::with_capacity(topics.len());
        for topic in topics {
            if !unique.contains(&topic) {
                unique.push(topic);
            }
        }
        let topics: Arc<[String]> = unique.into();
        let users: Arc<[String]> = users.into();
        let data = match &sender.user {
            Some(user) => Data::from_user(user, content, payload),
            None => Data::new(content, payload),
        };
        let skip = sender.skip;
        let direct = Arc::new(if users.is_empty() {
            Frames::default()
        } else {
            self.v1_frames(v1::to_user(&data))
        });
        let offsets = self.hub.publish(&topics, &data, |mut v1| {
            for delivery in &mut v1 {
                delivery.frames = self.v1_frames(delivery.frames.plain.clone());
            }
            let publish = Fanout {
                topics: topics.clone(),
                users,
                v1: v1.into(),
                direct,
                skip,
            };
            self.fan_out(publish, content, payload, done);
        });
        topics
            .iter()
            .zip(offsets)
            .filter_map(|(topic, offset)| Some((topic.clone(), offset?)))
            .collect()
    }

    /// Delivers one message that a broker published on `topic` to this
    /// node's subscribers of it, at `position` (offset and epoch assigned
    /// by the broker; `None` for a topic without history): the same
    /// fan-out as [`Handle::publish`], without the local hub. Calls from
    /// one thread are delivered in call order. See [`Handle::publish`]
    /// for `payload` and `done`.
    pub fn deliver(
        &self,
        topic: &str,
        position: Option<(u64, Epoch)>,
        content: Content,
        payload: &[u8],
        done: impl FnOnce(usize) + Send + 'static,
    ) {
        let data = Data::new(content, payload);
        let at = position.as_ref().map(|(offset, epoch)| Position {
            offset: *offset,
            epoch: epoch.as_str(),
        });
        let v1: Arc<[TopicFrame]> = Arc::new([TopicFrame {
            position,
            frames: self.v1_frames(v1::message(topic, at, &data).0),
        }]);
        let publish = Fanout {
            topics: Arc::new([topic.to_owned()]),
            users: Arc::new([]),
            v1,
            direct: Arc::new(Frames::default()),
            skip: None,
        };
        self.fan_out(publish, content, payload, done);
    }

    /// The one fan-out path of a publish whose positions are assigned
    /// (by the hub in [`Handle::publish_as`], by a broker for
    /// [`Handle::deliver`]): `payload`'s frames and `publish`'s to every
    /// worker; `done` gets the count of connections queued.
    fn fan_out(
        &self,
        publish: Fanout,
        content: Content,
        payload: &[u8],
        done: impl FnOnce(usize) + Send + 'static,
    ) {
        let frames = self.frames(content.opcode(), payload);
        self.send_all(
            |ack| Command::Publish {
                topics: publish.topics.clone(),
                users: publish.users.clone(),
                frames: frames.clone(),
                v1: publish.v1.clone(),
                direct: publish.direct.clone(),
                skip: publish.skip,
                ack,
            },
            done,
        );
    }

    /// Hands the broker's answer to a
    /// [`crate::upstream::Event::Recover`] back to the connection
    /// `origin` names (ignored if it left the topic or is gone).
    pub fn recovered(&self, origin: Origin, topic: String, position: Option<crate::hub::Recovery>) {
        if let Some(mailbox) = self.mailboxes.get(origin.worker as usize) {
            let _ = mailbox.send(Command::Recovered {
                slot: origin.slot,
                gen: origin.gen,
                topic,
                position,
            });
        }
    }

    /// Sends `{"op":"resync","topic":…}` to every `ringcast.v1`
    /// subscriber of any of `topics`, on every worker; `done` gets the
    /// number of hints queued.
    pub fn resync(&self, topics: Vec<String>, done: impl FnOnce(usize) + Send + 'static) {
        let topics: Arc<[String]> = topics.into();
        self.send_all(
            |ack| Command::Resync {
                topics: topics.clone(),
                ack,
            },
            done,
        );
    }

    /// Whether `topic` keeps history (matches a `--history` rule), and
    /// that rule.
    pub fn history_rule(&self, topic: &str) -> Option<&crate::hub::rules::Rule> {
        self.hub.rule(topic)
    }

    /// Sends one message to every connection on the topics endpoint
    /// (`ringcast.v1` ones as a `broadcast` op); see [`Handle::publish`]
    /// for `payload` and `done`.
    pub fn broadcast(
        &self,
        content: Content,
        payload: &[u8],
        done: impl FnOnce(usize) + Send + 'static,
    ) {
        let frames = self.frames(content.opcode(), payload);
        let v1 = self.v1_frames(v1::broadcast(&Data::new(content, payload)));
        self.send_all(
            |ack| Command::Broadcast {
                frames: frames.clone(),
                v1: v1.clone(),
                ack,
            },
            done,
        );
    }

    /// Closes every open connection of any of `users`, on every worker,
    /// with `code` (1000 or 3000–4999) and `reason` (at most 123 bytes).
    /// `done` is called, on a worker thread, with the number of
    /// connections being closed once every worker has started closing its
    /// own.
    pub fn disconnect(
        &self,
        users: Vec<String>,
        code: u16,
        reason: &str,
        done: impl FnOnce(usize) + Send + 'static,
    ) {
        let users: Arc<[String]> = users.into();
        let reason: Arc<str> = reason.into();
        self.send_all(
            |ack| Command::Disconnect {
                users: users.clone(),
                code,
                reason: reason.clone(),
                ack,
            },
            done,
        );
    }

    /// Counts the open connections of `user` over every worker; `done` is
    /// called, on a worker thread, with the sum.
    pub fn user_connections(&self, user: &str, done: impl FnOnce(usize) + Send + 'static) {
        let user: Arc<str> = user.into();
        self.send_all(
            |ack| Command::UserConnections {
                user: user.clone(),
                ack,
            },
            done,
        );
    }

    /// Up to `limit` retained messages of `topic` after offset `since`;
    /// `None` when the topic keeps no history (see [`Hub::page`]).
    pub fn history(&self, topic: &str, since: Option<u64>, limit: usize) -> Option<Page> {
        self.hub.page(topic, since, limit)
    }

    /// Current counters, summed over workers.
    pub fn stats(&self) -> Snapshot {
        let mut snapshot = stats::snapshot(&self.stats);
        snapshot.open = self.admission.open() as u64;
        snapshot.history = self.hub.stats();
        snapshot
    }

    /// Starts a drain: every worker closes its listener, closes its open
    /// connections with 1001 spread over the first 90% of `period` (in
    /// random order), answers handshakes still in progress with 503, and
    /// exits once it holds no connection or `period` has passed. Publishes
    /// handed over before this call are queued first and written before
    /// each connection's close frame.
    pub fn drain(&self, period: Duration) {
        self.tell_all(|| Command::Drain { period });
    }

    /// Closes `fraction` (clamped to 0.0–1.0) of each worker's open
    /// connections, chosen at random, with 1001 spread evenly over
    /// `period`, so that their clients reconnect through the load balancer
    /// onto other nodes. A later call replaces a rebalance under way.
    pub fn rebalance(&self, fraction: f64, period: Duration) {
        let fraction = fraction.clamp(0.0, 1.0);
        self.tell_all(|| Command::Rebalance { fraction, period });
    }

    /// Queues `frame` (an encoded frame, e.g. a `ringcast.v1` reply) to
    /// the connection `origin` names, if it is still open; a connection
    /// gone since, or a worker that exited, drops it.
    pub fn reply(&self, origin: Origin, frame: Bytes) {
        if let Some(mailbox) = self.mailboxes.get(origin.worker as usize) {
            let _ = mailbox.send(Command::Reply {
                slot: origin.slot,
                gen: origin.gen,
                frame,
            });
        }
    }

    /// Finishes the handshake `origin` names, parked for the connect hook,
    /// with the hook's `verdict`; a handshake gone since (timed out,
    /// client left) ignores it.
    pub fn admit(&self, origin: Origin, verdict: crate::upstream::Verdict) {
        if let Some(mailbox) = self.mailboxes.get(origin.worker as usize) {
            let _ = mailbox.send(Command::Admit {
                slot: origin.slot,
                gen: origin.gen,
                verdict,
            });
        }
    }

    /// Asks every worker to stop accepting, close its connections with 1001
    /// (waiting up to the close timeout for the close handshake) and exit.
    pub fn shutdown(&self) {
        self.tell_all(|| Command::Shutdown);
    }

    /// Makes worker `index` panic, to test how the process reacts
    /// (`fault-injection` builds only; never in a release).
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, index: usize) {
        if let Some(mailbox) = self.mailboxes.get(index) {
            let _ = mailbox.send(Command::InjectPanic);
        }
    }

    /// Sends every worker a command that needs no reply; a worker that
    /// has already exited is skipped.
    fn tell_all(&self, make: impl Fn() -> Command) {
        for mailbox in self.mailboxes.iter() {
            let _ = mailbox.send(make());
        }
    }
}
