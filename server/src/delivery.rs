//! The server's one publish path. `POST /publish` and client publishes
//! (ringcast.v1 `publish` ops, raw room messages) both come here, so they
//! fan out the same way: same ordering, same history. A broker spreading
//! publishes over several nodes changes this function only.

use ringcast_engine::{Content, Handle, Sender};

/// Publishes `payload` to every subscriber of `topics` and every
/// connection of `users` (see `Handle::publish_as`), as sent by `sender`
/// (`from`, and the echo skip); `done` gets the number of deliveries
/// queued. Returns each topic's offset when it keeps history.
pub fn publish(
    handle: &Handle,
    topics: Vec<String>,
    users: Vec<String>,
    content: Content,
    payload: &[u8],
    sender: &Sender,
    done: impl FnOnce(usize) + Send + 'static,
) -> Vec<(String, u64)> {
    handle.publish_as(topics, users, content, payload, sender, done)
}
