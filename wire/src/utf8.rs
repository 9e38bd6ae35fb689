//! UTF-8 validation of a text message that arrives in pieces (fragments,
//! reads): a character split between two pieces is carried over, and an
//! invalid byte is reported in the piece it arrives in, not when the
//! message ends (RFC 6455 §8.1: fail fast). Built on `core::str::from_utf8`.

/// Why a text message is not UTF-8: the connection closes with 1007.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validation state between pieces: at most 3 bytes of a character begun.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

/// Bytes of the character that starts with `lead` (a valid lead byte).
fn char_len(lead: u8) -> usize {
    match lead {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        _ => 2,
    }
}

impl Utf8Validator {
    /// Checks the next piece of the message.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let have = self.carry_len as usize;
            let take = (char_len(self.carry[0]) - have).min(bytes.len());
            self.carry[have..have + take].copy_from_slice(&bytes[..take]);
            self.carry_len += take as u8;
            bytes = &bytes[take..];
            match std::str::from_utf8(&self.carry[..self.carry_len as usize]) {
                Ok(_) => self.carry_len = 0,
                // Still short of its last byte: this piece ended.
                Err(e) if e.error_len().is_none() => return Ok(()),
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The message ended: a character left unfinished is invalid. Resets
    /// for the next message.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let unfinished = self.carry_len > 0;
        self.carry_len = 0;
        if unfinished {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_pieces(bytes: &[u8], size: usize) -> Result<(), InvalidUtf8> {
        let mut validator = Utf8Validator::default();
        for piece in bytes.chunks(size) {
            validator.feed(piece)?;
        }
        validator.finish()
    }

    #[test]
    fn valid_text_split_anywhere_is_valid() {
        let text = "aé€😀 κόσμε ok".as_bytes();
        for size in 1..=text.len() {
            assert_eq!(in_pieces(text, size), Ok(()), "pieces of {size}");
        }
    }

    #[test]
    fn invalid_bytes_fail_in_the_piece_they_arrive_in() {
        let mut validator = Utf8Validator::default();
        validator.feed("κόσμε".as_bytes()).unwrap();
        validator.feed(&[0xce]).unwrap();
        // 0xce must be followed by a continuation byte.
        assert_eq!(validator.feed(&[0x41, b'x', b'y']), Err(InvalidUtf8));
        let mut validator = Utf8Validator::default();
        assert_eq!(
            validator.feed(&[0xed, 0xa0, 0x80]),
            Err(InvalidUtf8),
            "surrogate"
        );
        let mut validator = Utf8Validator::default();
        assert_eq!(
            validator.feed(&[0xf4, 0x90]),
            Err(InvalidUtf8),
            "over U+10FFFF"
        );
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(&[0xc0]), Err(InvalidUtf8), "overlong lead");
    }

    #[test]
    fn a_character_left_unfinished_is_invalid() {
        let mut validator = Utf8Validator::default();
        validator.feed(&[b'a', 0xe2, 0x82]).unwrap();
        assert_eq!(validator.finish(), Err(InvalidUtf8));
        assert_eq!(validator.finish(), Ok(()), "reset for the next message");
    }
}
