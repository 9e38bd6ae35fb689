//! Whether JSON text is data every subscriber's parser holds as it is:
//! valid JSON, arrays and objects nested at most [`MAX_DATA_DEPTH`] deep,
//! every number a finite double (`1e999` is infinity to JavaScript and
//! nothing to MessagePack), every string valid Unicode (a lone surrogate
//! `"\ud800"` is refused by strict parsers and has no UTF-8 form), no
//! object with a name twice (parsers keep the first, the last or both: a
//! MessagePack subscriber would get another value than a JSON one). One pass
//! of serde_json over the text, allocating nothing but for strings with
//! escapes. Publications are checked at the edge (`pub`, the HTTP API, raw
//! rooms deciding between `data` and `text`, records from the broker), so
//! what is delivered is valid for every protocol. Pure.

use std::{borrow::Cow, fmt};

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

use crate::protocol::MAX_DATA_DEPTH;

/// Why JSON text is not data every parser holds.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnfitData(serde_json::Error);

/// Checks `json` (see the module's doc).
pub fn check(json: &[u8]) -> Result<(), UnfitData> {
    let mut reader = serde_json::Deserializer::from_slice(json);
    Value {
        depth_left: MAX_DATA_DEPTH,
    }
    .deserialize(&mut reader)
    .and_then(|()| reader.end())
    .map_err(UnfitData)
}

/// One JSON value, with the nesting still allowed inside it.
#[derive(Clone, Copy)]
struct Value {
    depth_left: usize,
}

impl Value {
    /// The value inside an array or object, or an error when that is
    /// nested too deep.
    fn inner<E: serde::de::Error>(self) -> Result<Value, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(Value { depth_left }),
            None => Err(E::custom(format_args!(
                "data nests arrays and objects deeper than {MAX_DATA_DEPTH}"
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Value {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON data")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, number: f64) -> Result<(), E> {
        // serde_json refuses overflowing literals itself; this keeps the
        // rule whatever the reader.
        match number.is_finite() {
            true => Ok(()),
            false => Err(E::custom("number out of range")),
        }
    }

    // serde_json hands out strings only once they are valid Unicode: a lone
    // surrogate escape is its error, before any visit.
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while items.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        // Names seen: on the stack for the usual small object, borrowed
        // from the text unless escaped.
        let mut few: [Option<Cow<'de, str>>; 16] = Default::default();
        let mut more: Vec<Cow<'de, str>> = Vec::new();
        let mut count = 0;
        while let Some(name) = fields.next_key_seed(Name)? {
            let seen = few[..count.min(few.len())]
                .iter()
                .flatten()
                .chain(&more)
                .any(|known| *known == name);
            if seen {
                return Err(A::Error::custom(format_args!(
                    "an object has the name {name:?} twice"
                )));
            }
            match few.get_mut(count) {
                Some(slot) => *slot = Some(name),
                None => more.push(name),
            }
            count += 1;
            fields.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// An object's member name, borrowed from the text when it has no escape.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object member's name")
    }

    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(name))
    }

    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    #[test]
    fn ordinary_json_is_fit() {
        for json in [
            "null",
            "true",
            " 1 ",
            "-0.5e-3",
            "1e-400",
            "18446744073709551616",
            "\"caf\\u00e9 \\ud83d\\ude00\"",
            "{\"a\":[1,{\"b\":\"x\\ny\"}],\"c\":{}}",
            "[1,\n2]",
        ] {
            assert!(check(json.as_bytes()).is_ok(), "{json}");
        }
        assert!(check(nested(MAX_DATA_DEPTH).as_bytes()).is_ok());
        // A name once per object; other objects may use it again.
        assert!(check(br#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#).is_ok());
        let wide = |extra: &str| {
            let names: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}{extra}}}", names.join(","))
        };
        assert!(check(wide("").as_bytes()).is_ok());
        assert!(
            check(wide(",\"k39\":0").as_bytes()).is_err(),
            "past the names on the stack"
        );
        assert!(check(wide(",\"k3\":0").as_bytes()).is_err());
    }

    #[test]
    fn what_a_parser_cannot_hold_is_unfit_and_says_why() {
        for (json, why) in [
            ("1e999", "number out of range"),
            ("[-1e400]", "number out of range"),
            ("\"\\ud800\"", "escape"),
            ("{\"\\udc00\":1}", "escape"),
            ("\"\\ud800\\u0041\"", "escape"),
            ("[1,]", "trailing comma"),
            ("{\"a\":1,\"a\":2}", "twice"),
            ("{\"a\":1,\"\\u0061\":2}", "twice"),
            ("[{\"x\":{\"k\":1,\"k\":[]}}]", "twice"),
            ("1 2", "trailing characters"),
            ("", "EOF"),
        ] {
            let error = check(json.as_bytes()).expect_err(json).to_string();
            assert!(error.contains(why), "{json}: {error}");
        }
        let deep = check(nested(MAX_DATA_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(deep.to_string().contains("deeper than 64"), "{deep}");
        let deep_object =
            "{\"a\":".repeat(MAX_DATA_DEPTH + 1) + "1" + &"}".repeat(MAX_DATA_DEPTH + 1);
        assert!(check(deep_object.as_bytes()).is_err());
    }

    #[test]
    fn arrays_and_objects_count_together_against_the_depth() {
        // `[{"a":[{"a":...}]}]`: alternating, one level each.
        let mixed = |depth: usize| {
            let (mut open, mut close) = (String::new(), String::new());
            for level in 0..depth {
                if level % 2 == 0 {
                    open.push('[');
                    close.insert(0, ']');
                } else {
                    open.push_str("{\"a\":");
                    close.insert(0, '}');
                }
            }
            let inner = if depth % 2 == 0 { "1" } else { "" };
            open + inner + &close
        };
        assert!(check(mixed(MAX_DATA_DEPTH).as_bytes()).is_ok());
        assert!(check(mixed(MAX_DATA_DEPTH + 1).as_bytes()).is_err());
    }

    #[test]
    fn json_white_space_around_the_value_is_fit() {
        assert!(check(b" \t\r\n{ \"a\" : [ 1 , 2 ] }\n ").is_ok());
    }

    #[test]
    fn numbers_in_forms_json_does_not_have_are_unfit() {
        for json in [
            "01",
            "+1",
            ".5",
            "1.",
            "NaN",
            "Infinity",
            "-Infinity",
            "0x10",
            "1e",
        ] {
            assert!(check(json.as_bytes()).is_err(), "{json}");
        }
    }

    #[test]
    fn strings_of_invalid_utf8_or_raw_control_characters_are_unfit() {
        for json in [&b"\"\xff\""[..], b"\"\xc3\"", b"\"a\x01b\"", b"\"a\nb\""] {
            assert!(check(json).is_err(), "{json:?}");
        }
    }

    #[test]
    fn very_deep_nesting_is_refused_without_exhausting_the_stack() {
        let depth = 1_000_000;
        let deep = "[".repeat(depth) + &"]".repeat(depth);
        assert!(check(deep.as_bytes()).is_err());
    }
}
