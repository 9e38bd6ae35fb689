//! Negotiating permessage-deflate (RFC 7692 §5, §7.1) from a client's
//! `Sec-WebSocket-Extensions` offers: the first offer shardcast can honour
//! is accepted, the others (and every other extension) declined. The answer
//! always says `server_no_context_takeover; client_no_context_takeover`, so
//! each message in either direction stands alone: that is what lets one
//! compressed frame serve every subscriber and one inflater serve every
//! connection of a shard. Pure code.

/// The largest LZ77 window, in bits (32 KiB): what shardcast inflates with.
pub const MAX_WINDOW_BITS: u8 = 15;

/// permessage-deflate as agreed with one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// The largest window the client inflates our messages with, in bits
    /// (its `server_max_window_bits`, else 15). Each message is compressed
    /// from fresh state, so no distance reaches before its start: a message
    /// of at most 2^bits bytes suits a smaller window, a longer one goes to
    /// such a client uncompressed.
    pub window_bits: u8,
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub response: String,
}

impl Agreement {
    /// Whether a message of `len` bytes, compressed from fresh state with a
    /// 32 KiB window, can be inflated by this client.
    pub fn fits(window_bits: u8, len: usize) -> bool {
        window_bits >= MAX_WINDOW_BITS || len <= 1 << window_bits
    }
}

/// The agreement for the offers in `header` (every `Sec-WebSocket-Extensions`
/// line, joined by commas), or `None` when no offer is of permessage-deflate
/// with parameters as RFC 7692 defines them (or the header cannot be read:
/// then the connection simply goes uncompressed).
pub fn negotiate(header: &str) -> Option<Agreement> {
    parse_offers(header)?
        .into_iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case("permessage-deflate"))
        .find_map(|offer| accept(&offer.params))
}

/// One extension offer: its name and parameters (values unquoted).
#[derive(Debug, PartialEq, Eq)]
struct Offer<'a> {
    name: &'a str,
    params: Vec<(&'a str, Option<String>)>,
}

/// Accepts one permessage-deflate offer (§7.1), or declines it: an unknown
/// or repeated parameter, a value where none belongs or a window size
/// outside 8..=15 declines it.
fn accept(params: &[(&str, Option<String>)]) -> Option<Agreement> {
    let mut seen = [false; 4];
    let mut server_window = None;
    for (name, value) in params {
        let which = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ]
        .iter()
        .position(|known| name.eq_ignore_ascii_case(known))?;
        if std::mem::replace(&mut seen[which], true) {
            return None;
        }
        match (which, value.as_deref()) {
            (0 | 1, None) => {}
            (2, Some(bits)) => server_window = Some(window_bits(bits)?),
            // The client may be told a smaller window; shardcast inflates
            // with 32 KiB, which reads any, so it is left as the client has it.
            (3, None) => {}
            (3, Some(bits)) => {
                window_bits(bits)?;
            }
            _ => return None,
        }
    }
    let mut response =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_window {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(Agreement {
        window_bits: server_window.unwrap_or(MAX_WINDOW_BITS),
        response,
    })
}

/// A window size parameter: `8`..=`15`, decimal digits only, no leading
/// zero (§7.1.2): not `+9`, which Rust's integer parsing would take.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// Parses `extension-list` (RFC 6455 §9.1): offers separated by commas,
/// each a token with `;`-separated parameters, a parameter a token with an
/// optional `=` value, a token or a quoted string. `None` on a syntax error.
fn parse_offers(header: &str) -> Option<Vec<Offer<'_>>> {
    let mut offers = Vec::new();
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            // Empty list elements are allowed (RFC 9110 §5.6.1).
            rest = after;
            continue;
        }
        if rest.is_empty() {
            return Some(offers);
        }
        let (name, after) = token(rest)?;
        rest = after;
        let mut offer = Offer {
            name,
            params: Vec::new(),
        };
        loop {
            rest = rest.trim_start_matches([' ', '\t']);
            let Some(after) = rest.strip_prefix(';') else {
                break;
            };
            let (param, after) = token(after.trim_start_matches([' ', '\t']))?;
            rest = after.trim_start_matches([' ', '\t']);
            let value = match rest.strip_prefix('=') {
                Some(after) => {
                    let (value, after) = value(after.trim_start_matches([' ', '\t']))?;
                    rest = after;
                    Some(value)
                }
                None => None,
            };
            offer.params.push((param, value));
        }
        offers.push(offer);
        rest = rest.trim_start_matches([' ', '\t']);
        match rest.strip_prefix(',') {
            Some(after) => rest = after,
            None if rest.is_empty() => return Some(offers),
            None => return None,
        }
    }
}

/// A token (RFC 9110 §5.6.2) at the start of `text`, and what follows it.
fn token(text: &str) -> Option<(&str, &str)> {
    let end = text.find(|c: char| !is_tchar(c)).unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A parameter value: a token, or a quoted string whose content must be a
/// token once unescaped (RFC 6455 §9.1).
fn value(text: &str) -> Option<(String, &str)> {
    let Some(quoted) = text.strip_prefix('"') else {
        let (value, rest) = token(text)?;
        return Some((value.to_owned(), rest));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                let rest = &quoted[at + 1..];
                return (!value.is_empty() && value.chars().all(is_tchar)).then_some((value, rest));
            }
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    fn agreed(header: &str) -> Option<(u8, String)> {
        negotiate(header).map(|a| (a.window_bits, a.response))
    }

    #[test]
    fn what_browsers_python_and_node_offer_is_accepted() {
        for offer in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits=15",
            "PerMessage-Deflate ; Client_No_Context_Takeover",
        ] {
            assert_eq!(agreed(offer), Some((15, BASE.to_owned())), "{offer}");
        }
    }

    #[test]
    fn a_server_window_is_echoed_and_remembered() {
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=10"),
            Some((10, format!("{BASE}; server_max_window_bits=10")))
        );
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=\"8\""),
            Some((8, format!("{BASE}; server_max_window_bits=8")))
        );
        assert!(Agreement::fits(8, 256));
        assert!(!Agreement::fits(8, 257));
        assert!(Agreement::fits(15, 1 << 20));
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_considered() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
            let second = format!("{bad}, permessage-deflate; client_max_window_bits");
            assert_eq!(agreed(&second), Some((15, BASE.to_owned())), "{second}");
        }
    }

    #[test]
    fn unreadable_headers_mean_no_compression() {
        for broken in [
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate; =3",
            "permessage-deflate server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=\"\"",
            "\"permessage-deflate\"",
        ] {
            assert_eq!(agreed(broken), None, "{broken}");
        }
        assert_eq!(agreed(""), None);
        assert_eq!(
            agreed(" , ,permessage-deflate,"),
            Some((15, BASE.to_owned()))
        );
    }

    #[test]
    fn a_client_window_of_any_valid_size_is_accepted_and_not_echoed() {
        for bits in 8..=15 {
            let offer = format!("permessage-deflate; client_max_window_bits={bits}");
            assert_eq!(agreed(&offer), Some((15, BASE.to_owned())), "{offer}");
        }
    }

    #[test]
    fn every_server_window_from_8_to_15_is_taken_and_bounds_what_fits() {
        for bits in 8..=MAX_WINDOW_BITS {
            let offer = format!("permessage-deflate; server_max_window_bits={bits}");
            let agreement = negotiate(&offer).unwrap();
            assert_eq!(agreement.window_bits, bits);
            if bits < MAX_WINDOW_BITS {
                assert!(Agreement::fits(bits, 1 << bits));
                assert!(!Agreement::fits(bits, (1 << bits) + 1));
            }
        }
    }

    #[test]
    fn a_window_size_is_digits_only() {
        for value in ["+9", "9.0", "-9", "1_0", "\"+10\""] {
            let offer = format!("permessage-deflate; server_max_window_bits={value}");
            assert_eq!(agreed(&offer), None, "{offer}");
            let offer = format!("permessage-deflate; client_max_window_bits={value}");
            assert_eq!(agreed(&offer), None, "{offer}");
        }
    }

    #[test]
    fn a_quoted_value_is_read_with_its_escapes() {
        assert_eq!(
            agreed(r#"permessage-deflate; server_max_window_bits="1\1""#),
            Some((11, format!("{BASE}; server_max_window_bits=11")))
        );
    }

    #[test]
    fn other_extensions_before_it_are_skipped() {
        assert_eq!(
            agreed("x-foo; a=b; c, permessage-deflate; server_max_window_bits=12, x-bar"),
            Some((12, format!("{BASE}; server_max_window_bits=12")))
        );
    }

    #[test]
    fn white_space_around_separators_is_allowed() {
        assert_eq!(
            agreed("permessage-deflate ;\tserver_max_window_bits = 13 ; client_max_window_bits ,"),
            Some((13, format!("{BASE}; server_max_window_bits=13")))
        );
    }
}
