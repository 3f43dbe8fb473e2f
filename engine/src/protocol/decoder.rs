//! A connection's read side: bytes in, messages out (RFC 6455 §5.4–§5.6).
//!
//! [`Decoder::feed`] takes bytes as they arrive, in any split, unmasks them
//! in place and reports each complete message and control frame in order.
//! A data message that arrives whole in one chunk is reported straight from
//! the caller's buffer, with no copy. Only a frame or fragmented message that
//! spans chunks is copied, into state the decoder allocates on demand and
//! frees as soon as the message is done: an idle decoder is one null pointer.

use super::close::{self, code};
use super::frame::{self, FrameHeader, HeaderError, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;
use std::ops::ControlFlow;

/// A complete message or control frame from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, validated as UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same payload (§5.5.2).
    Ping(&'a [u8]),
    /// A pong (§5.5.3).
    Pong(&'a [u8]),
    /// A valid close frame, with the status code to echo (`None` when the
    /// frame had no payload). Nothing after it is decoded (§5.5.1).
    Close(Option<u16>),
    /// A data message whose first frame had RSV1 set (permessage-deflate,
    /// RFC 7692 §6.2): `payload` is its DEFLATE data, all frames joined,
    /// without the trimmed `00 00 ff ff`. Inflate it (see
    /// [`super::deflate::Inflater`]), then check a text message's UTF-8.
    Compressed {
        /// The message is text (opcode 0x1).
        text: bool,
        /// The compressed bytes.
        payload: &'a [u8],
    },
}

/// The peer broke the protocol: fail the connection with this close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    /// Close code to send (RFC 6455 §7.4.1): 1002, 1007 or 1009.
    pub code: u16,
    /// Close reason to send, under 123 bytes.
    pub reason: &'static str,
}

impl ProtocolError {
    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// Whether decoding stopped at a close frame or callback request, or ran
/// out of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// All input was consumed; feed more when it arrives.
    NeedMore,
    /// A close frame was reported, or the callback returned `Break`. The
    /// rest of the input was not decoded.
    Stopped,
}

/// Per-connection decoder. 8 bytes while no frame is in progress.
#[derive(Default, Debug)]
pub struct Decoder {
    partial: Option<Box<State>>,
}

/// The frame whose payload is being read.
#[derive(Clone, Copy, Debug)]
struct Frame {
    opcode: OpCode,
    fin: bool,
    /// RSV1 on a message's first frame: the message is compressed.
    compressed: bool,
    key: [u8; 4],
    len: u64,
    read: u64,
}

/// A data message that spans frames or chunks.
#[derive(Debug, Default)]
struct Assembly {
    text: bool,
    /// The payload is DEFLATE data: UTF-8 is checked after inflating.
    compressed: bool,
    payload: Vec<u8>,
    utf8: Utf8Validator,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes of a header split across chunks.
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    frame: Option<Frame>,
    /// Set from the first frame of a fragmented message, or a single frame
    /// split across chunks, until its last byte.
    message: Option<Assembly>,
    /// Payload of a control frame split across chunks (at most 125 bytes).
    control: Vec<u8>,
}

/// Callback for each decoded message; `Break` stops decoding.
pub type OnMessage<'f> = dyn FnMut(Message<'_>) -> ControlFlow<()> + 'f;

/// Largest up-front allocation for a message split across chunks, in bytes;
/// beyond it the buffer grows only as bytes really arrive.
const INITIAL_ASSEMBLY_CAPACITY: u64 = 64 * 1024;

impl Decoder {
    /// Decodes `input`, the next bytes from the peer, unmasking them in
    /// place. Calls `on_message` for every complete message and control
    /// frame, in order. Messages over `max_message` bytes are refused.
    /// With `deflate` (permessage-deflate negotiated), a data message whose
    /// first frame has RSV1 set is reported as [`Message::Compressed`]; its
    /// compressed size may pass `max_message` by [`compressed_limit`]'s
    /// slack, since the limit applies to what it inflates to.
    ///
    /// # Errors
    /// [`ProtocolError`] with close code 1002 (unmasked frame, RSV bits set
    /// other than RSV1 on a message's first frame with `deflate`, reserved
    /// opcode, fragmented or oversized control frame, bad fragment
    /// sequence, bad close payload), 1007 (text or close reason not UTF-8)
    /// or 1009 (message over `max_message` bytes). The connection must be
    /// failed; the decoder is not usable afterwards.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        max_message: usize,
        deflate: bool,
        on_message: &mut OnMessage<'_>,
    ) -> Result<Fed, ProtocolError> {
        let mut boxed = self.partial.take();
        let mut state = boxed.as_deref_mut().map(std::mem::take).unwrap_or_default();
        let limits = Limits {
            max_message: max_message as u64,
            deflate,
        };
        let fed = state.feed(input, limits, on_message)?;
        if !state.is_idle() {
            match boxed.as_deref_mut() {
                Some(slot) => *slot = state,
                None => boxed = Some(Box::new(state)),
            }
            self.partial = boxed;
        }
        Ok(fed)
    }
}

/// Largest compressed message accepted for a limit of `max_message`
/// inflated bytes: DEFLATE's worst case on incompressible data (5 bytes
/// per 64 KiB stored block) plus a margin. The inflated size is what the
/// limit is about, and it is checked as it is produced.
pub fn compressed_limit(max_message: u64) -> u64 {
    max_message + max_message / 8192 + 64
}

#[derive(Clone, Copy)]
struct Limits {
    max_message: u64,
    deflate: bool,
}

fn header_error(e: HeaderError) -> ProtocolError {
    match e {
        HeaderError::ReservedOpcode => ProtocolError::new(code::PROTOCOL_ERROR, "reserved opcode"),
        HeaderError::LengthOverflow => {
            ProtocolError::new(code::PROTOCOL_ERROR, "payload length over 2^63")
        }
    }
}

impl State {
    fn is_idle(&self) -> bool {
        self.header_len == 0 && self.frame.is_none() && self.message.is_none()
    }

    /// Takes the next header from `input[*pos..]`, joining bytes held from
    /// the previous chunk. `None` when the input ends first.
    fn next_header(
        &mut self,
        input: &[u8],
        pos: &mut usize,
    ) -> Result<Option<FrameHeader>, ProtocolError> {
        let rest = &input[*pos..];
        let have = usize::from(self.header_len);
        if have == 0 {
            return match frame::parse_header(rest).map_err(header_error)? {
                Some(h) => {
                    *pos += h.header_len;
                    Ok(Some(h))
                }
                None => {
                    self.header[..rest.len()].copy_from_slice(rest);
                    self.header_len = rest.len() as u8;
                    *pos = input.len();
                    Ok(None)
                }
            };
        }
        let take = (MAX_HEADER_LEN - have).min(rest.len());
        self.header[have..have + take].copy_from_slice(&rest[..take]);
        match frame::parse_header(&self.header[..have + take]).map_err(header_error)? {
            Some(h) => {
                *pos += h.header_len - have;
                self.header_len = 0;
                Ok(Some(h))
            }
            None => {
                self.header_len = (have + take) as u8;
                *pos = input.len();
                Ok(None)
            }
        }
    }

    /// Checks a client frame header against RFC 6455 §5.2–§5.5 and the size
    /// limit, and makes it the current frame.
    fn begin_frame(&mut self, h: FrameHeader, limits: Limits) -> Result<(), ProtocolError> {
        let err = |reason| Err(ProtocolError::new(code::PROTOCOL_ERROR, reason));
        // `rsv` holds RSV1 (0b100), RSV2 and RSV3.
        let rsv1 = h.rsv & 0b100 != 0;
        if h.rsv & 0b011 != 0 || (rsv1 && !limits.deflate) {
            return err("RSV bits set without a negotiated extension");
        }
        if rsv1 && h.opcode.is_control() {
            return err("RSV1 on a control frame");
        }
        if rsv1 && h.opcode == OpCode::Continuation {
            return err("RSV1 on a continuation frame");
        }
        let Some(key) = h.mask else {
            return err("client frames must be masked");
        };
        if h.opcode.is_control() {
            if !h.fin {
                return err("fragmented control frame");
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return err("control frame payload over 125 bytes");
            }
        } else {
            let (so_far, compressed) = match (&self.message, h.opcode) {
                (Some(_), OpCode::Text | OpCode::Binary) => {
                    return err("new data frame before the fragmented message ended")
                }
                (None, OpCode::Continuation) => return err("continuation frame with no message"),
                (Some(m), _) => (m.payload.len() as u64, m.compressed),
                (None, _) => (0, rsv1),
            };
            let max = if compressed {
                compressed_limit(limits.max_message)
            } else {
                limits.max_message
            };
            if so_far + h.payload_len > max {
                return Err(ProtocolError::new(code::MESSAGE_TOO_BIG, "message too big"));
            }
            if self.message.is_none() && !h.fin {
                self.message = Some(Assembly {
                    text: h.opcode == OpCode::Text,
                    compressed,
                    ..Assembly::default()
                });
            }
        }
        self.frame = Some(Frame {
            opcode: h.opcode,
            fin: h.fin,
            compressed: rsv1,
            key,
            len: h.payload_len,
            read: 0,
        });
        Ok(())
    }

    fn feed(
        &mut self,
        input: &mut [u8],
        limits: Limits,
        on_message: &mut OnMessage<'_>,
    ) -> Result<Fed, ProtocolError> {
        let mut pos = 0;
        loop {
            if self.frame.is_none() {
                if pos == input.len() {
                    return Ok(Fed::NeedMore);
                }
                match self.next_header(input, &mut pos)? {
                    Some(h) => self.begin_frame(h, limits)?,
                    None => return Ok(Fed::NeedMore),
                }
            }
            let mut f = self.frame.expect("a frame is in progress");
            let take = (f.len - f.read).min((input.len() - pos) as u64) as usize;
            if take == 0 && f.read < f.len {
                return Ok(Fed::NeedMore);
            }
            let chunk = &mut input[pos..pos + take];
            apply_mask(chunk, f.key, (f.read % 4) as usize);
            pos += take;
            let whole_in_chunk = f.read == 0 && take as u64 == f.len;
            f.read += take as u64;
            let complete = f.read == f.len;
            self.frame = if complete { None } else { Some(f) };

            let flow = if f.opcode.is_control() {
                self.control_payload(f.opcode, chunk, whole_in_chunk, complete, on_message)?
            } else {
                self.data_payload(f, chunk, whole_in_chunk, complete, on_message)?
            };
            if flow.is_break() {
                return Ok(Fed::Stopped);
            }
        }
    }

    fn control_payload(
        &mut self,
        opcode: OpCode,
        chunk: &[u8],
        whole_in_chunk: bool,
        complete: bool,
        on_message: &mut OnMessage<'_>,
    ) -> Result<ControlFlow<()>, ProtocolError> {
        if !whole_in_chunk {
            self.control.extend_from_slice(chunk);
            if !complete {
                return Ok(ControlFlow::Continue(()));
            }
        }
        let payload = if whole_in_chunk {
            chunk
        } else {
            &self.control[..]
        };
        let flow = match opcode {
            OpCode::Ping => on_message(Message::Ping(payload)),
            OpCode::Pong => on_message(Message::Pong(payload)),
            OpCode::Close => {
                let status = close::parse_payload(payload)
                    .map_err(|c| ProtocolError::new(c, "invalid close frame"))?;
                let _ = on_message(Message::Close(status));
                ControlFlow::Break(())
            }
            _ => unreachable!("control opcodes only"),
        };
        self.control.clear();
        Ok(flow)
    }

    fn data_payload(
        &mut self,
        f: Frame,
        chunk: &[u8],
        whole_in_chunk: bool,
        complete: bool,
        on_message: &mut OnMessage<'_>,
    ) -> Result<ControlFlow<()>, ProtocolError> {
        let invalid_utf8 = || ProtocolError::new(code::INVALID_PAYLOAD, "text is not valid UTF-8");
        if whole_in_chunk && f.fin && self.message.is_none() {
            // Fast path: the whole message is in the caller's buffer.
            return Ok(match f.opcode {
                _ if f.compressed => on_message(Message::Compressed {
                    text: f.opcode == OpCode::Text,
                    payload: chunk,
                }),
                OpCode::Text => on_message(Message::Text(
                    std::str::from_utf8(chunk).map_err(|_| invalid_utf8())?,
                )),
                _ => on_message(Message::Binary(chunk)),
            });
        }
        let message = self.message.get_or_insert_with(|| Assembly {
            text: f.opcode == OpCode::Text,
            compressed: f.compressed,
            payload: Vec::with_capacity(f.len.min(INITIAL_ASSEMBLY_CAPACITY) as usize),
            utf8: Utf8Validator::default(),
        });
        if message.text && !message.compressed {
            message.utf8.feed(chunk).map_err(|_| invalid_utf8())?;
        }
        message.payload.extend_from_slice(chunk);
        if !(complete && f.fin) {
            return Ok(ControlFlow::Continue(()));
        }
        let message = self.message.take().expect("message in progress");
        if message.compressed {
            return Ok(on_message(Message::Compressed {
                text: message.text,
                payload: &message.payload,
            }));
        }
        if !message.text {
            return Ok(on_message(Message::Binary(&message.payload)));
        }
        let mut utf8 = message.utf8;
        utf8.finish().map_err(|_| invalid_utf8())?;
        let text = std::str::from_utf8(&message.payload).map_err(|_| invalid_utf8())?;
        Ok(on_message(Message::Text(text)))
    }
}

#[cfg(test)]
#[path = "decoder_tests.rs"]
mod tests;
