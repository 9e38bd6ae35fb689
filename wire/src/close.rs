//! The payload of a close frame (RFC 6455 §5.5.1, §7.4): empty, or a
//! two-byte status code that an endpoint may send, then a UTF-8 reason.

/// Why a close payload is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseError {
    /// One byte: a code needs two (1002).
    TooShort,
    /// A code no endpoint may send: under 1000, 1004–1006, 1015, or a
    /// reserved range (1002).
    BadCode(u16),
    /// The reason is not UTF-8 (1007).
    BadReason,
}

/// Whether an endpoint may send `code` in a close frame: the codes RFC 6455
/// and its IANA registry define (1000–1003, 1007–1014) and the ranges left
/// to libraries and applications (3000–4999).
pub fn is_valid_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Reads a close payload: `None` when empty, else the code and reason.
pub fn parse(payload: &[u8]) -> Result<Option<(u16, &str)>, CloseError> {
    match payload {
        [] => Ok(None),
        [_] => Err(CloseError::TooShort),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid_code(code) {
                return Err(CloseError::BadCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| CloseError::BadReason)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_as_autobahn_checks_them() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_code(code), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_code(code), "{code}");
        }
    }

    #[test]
    fn payloads() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(&[3]), Err(CloseError::TooShort));
        assert_eq!(parse(&[0x03, 0xe8, b'o', b'k']), Ok(Some((1000, "ok"))));
        assert_eq!(parse(&[0x03, 0xed]), Err(CloseError::BadCode(1005)));
        assert_eq!(parse(&[0x03, 0xe8, 0xff]), Err(CloseError::BadReason));
    }
}
