//! ringcast engine.
pub mod protocol;
