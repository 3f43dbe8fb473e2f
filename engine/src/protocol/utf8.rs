//! Incremental UTF-8 validation (RFC 6455 §8.1: a text message whose
//! payload is not UTF-8 fails the connection with close code 1007).
//!
//! Fragments and partial reads may split a code point; the validator carries
//! at most 3 bytes between calls. It fails fast: a byte that cannot start or
//! continue a valid sequence is reported by the call that sees it, before the
//! rest of the message arrives.

/// The payload is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validation state carried between chunks of one text message: the bytes
/// of a code point that the previous chunk ended inside.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// Expected length in bytes of a sequence starting with `first`, 0 if
/// `first` cannot start one.
fn sequence_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

/// Validates `bytes` as a prefix of UTF-8. Returns the length of a trailing
/// incomplete (but so far valid) sequence, or an error.
fn validate_prefix(bytes: &[u8]) -> Result<usize, InvalidUtf8> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(0),
        Err(e) if e.error_len().is_none() => Ok(bytes.len() - e.valid_up_to()),
        Err(_) => Err(InvalidUtf8),
    }
}

impl Utf8Validator {
    /// Validates the next `chunk` of the message.
    ///
    /// # Errors
    /// [`InvalidUtf8`] as soon as `chunk` holds a byte that makes the
    /// message invalid, whatever follows.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let need = sequence_len(self.pending[0]);
            let take = (need - have).min(chunk.len());
            self.pending[have..have + take].copy_from_slice(&chunk[..take]);
            let filled = have + take;
            let incomplete = validate_prefix(&self.pending[..filled])?;
            chunk = &chunk[take..];
            if incomplete > 0 {
                // Still inside the code point: the chunk was too short.
                debug_assert!(chunk.is_empty());
                self.pending_len = filled as u8;
                return Ok(());
            }
            self.pending_len = 0;
        }
        let incomplete = validate_prefix(chunk)?;
        let tail = &chunk[chunk.len() - incomplete..];
        self.pending[..incomplete].copy_from_slice(tail);
        self.pending_len = incomplete as u8;
        Ok(())
    }

    /// Ends the message.
    ///
    /// # Errors
    /// [`InvalidUtf8`] if the message ended inside a code point.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], at: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::default();
        let mut start = 0;
        for &cut in at {
            v.feed(&bytes[start..cut])?;
            start = cut;
        }
        v.feed(&bytes[start..])?;
        v.finish()
    }

    #[test]
    fn valid_text_split_at_every_byte_is_valid() {
        let text = "κόσμε ✓ 𝄞 plain".as_bytes();
        for cut in 0..=text.len() {
            assert_eq!(feed_split(text, &[cut]), Ok(()), "cut at {cut}");
        }
        let every: Vec<usize> = (1..text.len()).collect();
        assert_eq!(feed_split(text, &every), Ok(()));
    }

    #[test]
    fn invalid_sequences_are_rejected_however_split() {
        let cases: [&[u8]; 5] = [
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // surrogate
            b"\xf4\x90\x80\x80",                                               // > U+10FFFF
            b"\xc0\xaf",                                                       // overlong
            b"abc\xff",
            b"\xe0\x80\x80",
        ];
        for bytes in cases {
            for cut in 0..=bytes.len() {
                assert_eq!(
                    feed_split(bytes, &[cut]),
                    Err(InvalidUtf8),
                    "{bytes:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn fails_fast_before_the_message_ends() {
        let mut v = Utf8Validator::default();
        // 0xF4 0x90 can never become valid: rejected without more bytes.
        assert_eq!(v.feed(b"ok\xf4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_code_point_fails_at_finish() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed("é".as_bytes()[..1].as_ref()), Ok(()));
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }
}
