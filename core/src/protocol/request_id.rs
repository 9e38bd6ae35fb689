//! A request's `id`: what a client names an op with, so that the answer
//! (`ack`, `err`, `pong`, `presence`, `occupancy`) names it back. It is
//! echoed as the client wrote it — the JSON text of an integer, or of a
//! string with its quotes and escapes — so it is checked once, where an op
//! is read ([`RequestId::parse`]), and from there on travels as a
//! [`RequestId`] (borrowed from the frame) or a [`RequestIdBuf`] (kept
//! while an answer is on its way from another shard or the broker), never
//! as a bare string.

/// Longest accepted request `id`, in bytes of JSON text: digits of an
/// integer, or what is between the quotes of a string.
pub const MAX_ID_LEN: usize = 64;

/// A request's `id`, checked: the JSON text of an integer, or of a string
/// of at most [`MAX_ID_LEN`] bytes between its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId<'a>(&'a str);

/// An `id` that is neither an integer nor a string of at most
/// [`MAX_ID_LEN`] bytes (the op is refused with `bad_json`, without an id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("id must be an integer or a string of at most 64 bytes")]
pub struct BadRequestId;

impl<'a> RequestId<'a> {
    /// Checks `json`, the text of one JSON value (as a parser hands it
    /// over, e.g. serde_json's `RawValue`): it must be an integer (a number
    /// like 2E6222 is valid JSON that most parsers refuse: echoed
    /// verbatim, it must read back everywhere) or a string, of at most
    /// [`MAX_ID_LEN`] bytes of digits or between the quotes.
    pub fn parse(json: &'a str) -> Result<Self, BadRequestId> {
        let digits = json.strip_prefix('-').unwrap_or(json);
        let integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        let string = json.len() >= 2 && json.starts_with('"') && json.ends_with('"');
        let len = if string { json.len() - 2 } else { digits.len() };
        if !(string || integer) || len > MAX_ID_LEN {
            return Err(BadRequestId);
        }
        Ok(RequestId(json))
    }

    /// The JSON text to echo.
    pub fn as_json(self) -> &'a str {
        self.0
    }

    /// The same id, owned (for an answer that comes later).
    pub fn to_buf(self) -> RequestIdBuf {
        RequestIdBuf(self.0.into())
    }
}

/// A [`RequestId`] kept until its answer is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdBuf(Box<str>);

impl RequestIdBuf {
    pub fn as_id(&self) -> RequestId<'_> {
        RequestId(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_short_strings_are_ids_as_written() {
        for json in ["7", "-12", "0", r#""x""#, r#""""#, r#""a\"b""#] {
            assert_eq!(RequestId::parse(json).map(RequestId::as_json), Ok(json));
        }
        let longest = format!("\"{}\"", "x".repeat(MAX_ID_LEN));
        assert!(RequestId::parse(&longest).is_ok());
        assert!(RequestId::parse(&"9".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn anything_else_is_refused() {
        let too_long = format!("\"{}\"", "x".repeat(MAX_ID_LEN + 1));
        for json in [
            "1.5",
            "2E6222",
            "-",
            "",
            "true",
            "null",
            "[1]",
            "{}",
            "\"",
            &too_long,
            &"9".repeat(MAX_ID_LEN + 1),
        ] {
            assert_eq!(RequestId::parse(json), Err(BadRequestId), "{json}");
        }
    }

    #[test]
    fn an_id_kept_is_the_same_id() {
        let id = RequestId::parse(r#""s1""#).unwrap();
        assert_eq!(id.to_buf().as_id(), id);
    }

    #[test]
    fn a_sign_or_space_other_than_a_leading_minus_is_not_an_integer() {
        for json in ["+1", " 1", "1 ", "--1", "1-", "0x1"] {
            assert_eq!(RequestId::parse(json), Err(BadRequestId), "{json:?}");
        }
    }

    #[test]
    fn an_integers_limit_counts_its_digits_not_its_sign() {
        assert!(RequestId::parse(&format!("-{}", "9".repeat(MAX_ID_LEN))).is_ok());
        assert_eq!(
            RequestId::parse(&format!("-{}", "9".repeat(MAX_ID_LEN + 1))),
            Err(BadRequestId)
        );
    }

    #[test]
    fn a_strings_limit_counts_bytes_between_the_quotes() {
        // 32 two-byte characters are 64 bytes; 33 are over.
        assert!(RequestId::parse(&format!("\"{}\"", "é".repeat(MAX_ID_LEN / 2))).is_ok());
        assert_eq!(
            RequestId::parse(&format!("\"{}\"", "é".repeat(MAX_ID_LEN / 2 + 1))),
            Err(BadRequestId)
        );
    }
}
