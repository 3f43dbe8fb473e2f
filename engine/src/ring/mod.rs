//! The kernel interface: io_uring setup, the provided buffer ring that
//! multishot receives fill, the `user_data` tokens that route each CQE back
//! to its connection, and the SO_REUSEPORT listener.

pub mod buf_ring;
pub mod listener;
pub mod setup;
pub mod token;
