//! One client connection's record: 24 bytes, indexed by its fixed-file
//! slot. Bytes are kept only while a frame or the handshake response is
//! split across receives.

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum State {
    /// The slot is unused.
    #[default]
    Free,
    /// SOCKET → BIND → CONNECT is in flight.
    Connecting,
    /// An SQE of the connect chain failed and the failure is counted; the
    /// chain's last CQE (CONNECT, cancelled) releases the slot.
    ChainFailed,
    /// The upgrade request is sent; waiting for the 101.
    Handshaking,
    /// The WebSocket is open.
    Open,
    /// Cancel and CLOSE are in flight; CQEs for the slot are ignored until
    /// the CLOSE completes and the slot is free again.
    Closing,
}

/// A connection.
#[derive(Default)]
pub struct Conn {
    /// Bytes of a split handshake response or frame, waiting for the rest.
    /// Boxed: 8 bytes in the record instead of a `Vec`'s 24, since almost
    /// every connection has none.
    #[allow(clippy::box_collection)]
    pub partial: Option<Box<Vec<u8>>>,
    /// µs timestamp (truncated [`super::now_ns`] / 1000): when the connect
    /// started, then when the outstanding echo was sent.
    pub stamp_us: u32,
    /// Fan-out: the sequence number expected next.
    pub next_seq: u32,
    /// Life-cycle state.
    pub state: State,
    /// Bumped when the slot is freed; CQEs carry it, so a late CQE of a
    /// previous tenant is recognised and ignored.
    pub gen: u8,
}

/// µs on the wrapping 32-bit clock in [`Conn::stamp_us`]; differences are
/// right for spans under 71 minutes.
pub fn now_us() -> u32 {
    (super::now_ns() / 1000) as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn record_stays_small() {
        assert_eq!(std::mem::size_of::<super::Conn>(), 24);
    }
}
