//! `user_data` tokens: which operation a CQE completes, and for which
//! connection.
//!
//! Layout (64 bits): operation in bits 56–63, connection generation in bits
//! 32–55, fixed-file slot in bits 0–31. The generation is checked against
//! the connection table as an invariant: a connection's slot is released
//! (IORING_OP_CLOSE) only once none of its operations are in flight, so a
//! CQE never arrives for a slot's later tenant.

/// The operation an SQE was submitted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// An accept on the worker's listener; the slot field holds the index
    /// of its address buffer.
    Accept = 1,
    /// Multishot receive on a connection.
    Recv = 2,
    /// A send of queued frames on a connection.
    Send = 3,
    /// `shutdown(SHUT_WR)` after the last frame (close handshake).
    Shutdown = 4,
    /// Cancellation of a connection's operations.
    Cancel = 5,
    /// Close of a connection's fixed file slot.
    Close = 6,
    /// Read of the worker's wake-up eventfd (commands are waiting).
    Wake = 7,
}

/// A decoded `user_data` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// The operation.
    pub op: Op,
    /// Fixed-file slot (the connection's key), 0 for worker-level ops.
    pub slot: u32,
    /// Generation of the connection in that slot (24 bits).
    pub gen: u32,
}

/// Generations wrap at 24 bits.
pub const GEN_MASK: u32 = 0x00ff_ffff;

impl Token {
    /// A token for a worker-level operation.
    pub const fn worker(op: Op) -> Self {
        Self {
            op,
            slot: 0,
            gen: 0,
        }
    }

    /// A token for the accept using address buffer `index`.
    pub const fn accept(index: u32) -> Self {
        Self {
            op: Op::Accept,
            slot: index,
            gen: 0,
        }
    }

    /// Packs the token into `user_data`.
    pub fn encode(self) -> u64 {
        (self.op as u64) << 56 | u64::from(self.gen & GEN_MASK) << 32 | u64::from(self.slot)
    }

    /// Unpacks `user_data` written by [`Token::encode`].
    ///
    /// # Panics
    /// On a value no SQE of ours carries (a broken invariant).
    pub fn decode(user_data: u64) -> Self {
        let op = match (user_data >> 56) as u8 {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Shutdown,
            5 => Op::Cancel,
            6 => Op::Close,
            7 => Op::Wake,
            other => panic!("CQE with unknown operation {other}"),
        };
        Self {
            op,
            slot: user_data as u32,
            gen: (user_data >> 32) as u32 & GEN_MASK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Token {
            op: Op::Send,
            slot: 19_999,
            gen: GEN_MASK,
        };
        assert_eq!(Token::decode(t.encode()), t);
        assert_eq!(Token::decode(Token::worker(Op::Wake).encode()).op, Op::Wake);
    }
}
