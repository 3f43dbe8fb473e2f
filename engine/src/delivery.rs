//! What a publish carries to the workers: the frames encoded once per
//! publish (and compressed once), shared by every worker and subscriber.

use crate::conn::{Deflate, Route};
use crate::hub::epoch::Epoch;
use bytes::Bytes;

/// One published message, encoded once: shared by all subscribers.
#[derive(Clone, Default)]
pub struct Frames {
    /// The frame, uncompressed.
    pub plain: Bytes,
    /// The same message compressed (RSV1, no context takeover, 32 KiB
    /// window: RFC 7692 §7.2.1), for connections that negotiated
    /// permessage-deflate with the full window; `None` when compression is
    /// off, the message is under `--compression-min-size`, it did not
    /// shrink, or no connection had negotiated it.
    pub deflated: Option<Bytes>,
}

impl Frames {
    /// Only the uncompressed frame.
    pub fn plain(plain: Bytes) -> Self {
        Self {
            plain,
            deflated: None,
        }
    }

    /// The frame for a connection with `route`.
    pub fn for_route(&self, route: Option<Route>) -> &Bytes {
        match &self.deflated {
            Some(deflated) if route.is_some_and(|r| r.deflate() == Deflate::Full) => deflated,
            _ => &self.plain,
        }
    }
}

/// One topic's `ringcast.v1` delivery of a publish, as the workers get it.
pub struct TopicFrame {
    /// Offset and epoch, for a topic that keeps history.
    pub position: Option<(u64, Epoch)>,
    /// The encoded delivery frames, shared by every worker and subscriber
    /// ([`crate::hub::Hub::publish`] leaves the compressed one to its caller).
    pub frames: Frames,
}
