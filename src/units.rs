//! Human-friendly units for configuration values: byte sizes (`64KiB`, `1MiB`,
//! `1000`) and durations (`25s`, `500ms`, `2m`). Pure parsing, no I/O; used by
//! the CLI, the TOML file and the environment alike so all three accept the same
//! spellings.

use std::{fmt, str::FromStr, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// A size in bytes. Accepts a plain integer or a number with a suffix
/// `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB` (all powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

/// A duration. Accepts a number with a unit `ms`, `s`, `m` or `h`
/// (`250ms`, `25s`, `2m`); a plain number means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Why a size or duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {text:?} as {what}: {why}")]
pub struct UnitError {
    text: String,
    what: &'static str,
    why: &'static str,
}

fn split_number(text: &str) -> (&str, &str) {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    (&text[..end], text[end..].trim())
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |why| UnitError {
            text: text.to_owned(),
            what: "a byte size",
            why,
        };
        let (number, suffix) = split_number(text);
        let number: u64 = number
            .parse()
            .map_err(|_| error("expected a whole number"))?;
        let multiplier: u64 = match suffix.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return Err(error("unknown unit (use B, KiB, MiB or GiB)")),
        };
        let bytes = number
            .checked_mul(multiplier)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| error("too large"))?;
        Ok(ByteSize(bytes))
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |why| UnitError {
            text: text.to_owned(),
            what: "a duration",
            why,
        };
        let (number, unit) = split_number(text);
        let number: f64 = number.parse().map_err(|_| error("expected a number"))?;
        let seconds = match unit {
            "ms" => number / 1000.0,
            "" | "s" => number,
            "m" | "min" => number * 60.0,
            "h" => number * 3600.0,
            _ => return Err(error("unknown unit (use ms, s, m or h)")),
        };
        if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
            return Err(error("out of range"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(seconds)))
    }
}

/// Written in the largest unit that holds it exactly (`64KiB`, `1MiB`,
/// `1000B`), so it parses back to the same size.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if bytes != 0 && bytes % (1 << shift) == 0 {
                return write!(f, "{}{unit}", bytes >> shift);
            }
        }
        write!(f, "{bytes}B")
    }
}

/// Written in whole seconds when it is some (`25s`), else in milliseconds
/// (`1500ms`), so it parses back to the same duration at millisecond
/// precision.
impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms != 0 && ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Both units are written in TOML either as a string (`"64KiB"`, `"25s"`) or as
/// a bare integer (bytes, seconds).
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u64),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match TextOrNumber::deserialize(d)? {
            TextOrNumber::Text(t) => t.parse().map_err(de::Error::custom),
            TextOrNumber::Number(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(|_| de::Error::custom("byte size too large")),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match TextOrNumber::deserialize(d)? {
            TextOrNumber::Text(t) => t.parse().map_err(de::Error::custom),
            TextOrNumber::Number(n) => Ok(HumanDuration(Duration::from_secs(n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_written_as_they_parse() {
        for (size, text) in [
            (65536, "64KiB"),
            (1 << 20, "1MiB"),
            (1000, "1000B"),
            (0, "0B"),
        ] {
            assert_eq!(ByteSize(size).to_string(), text);
            assert_eq!(text.parse::<ByteSize>().unwrap().0, size);
        }
        for (ms, text) in [(25_000, "25s"), (1_500, "1500ms"), (0, "0ms")] {
            let duration = Duration::from_millis(ms);
            assert_eq!(HumanDuration(duration).to_string(), text);
            assert_eq!(text.parse::<HumanDuration>().unwrap().0, duration);
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("1000".parse(), Ok(ByteSize(1000)));
        assert_eq!("64KiB".parse(), Ok(ByteSize(64 << 10)));
        assert_eq!("1 MiB".parse(), Ok(ByteSize(1 << 20)));
        assert_eq!("2m".parse(), Ok(ByteSize(2 << 20)));
        assert!("12 apples".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert!("99999999999999999999G".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!("25s".parse(), Ok(HumanDuration(Duration::from_secs(25))));
        assert_eq!(
            "250ms".parse(),
            Ok(HumanDuration(Duration::from_millis(250)))
        );
        assert_eq!("2m".parse(), Ok(HumanDuration(Duration::from_secs(120))));
        assert_eq!("3".parse(), Ok(HumanDuration(Duration::from_secs(3))));
        assert!("3 fortnights".parse::<HumanDuration>().is_err());
        assert!("-1s".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn toml_accepts_text_and_numbers() {
        #[derive(Deserialize)]
        struct T {
            a: ByteSize,
            b: HumanDuration,
            c: ByteSize,
        }
        let t: T = toml::from_str("a = \"1KiB\"\nb = 5\nc = 12").unwrap();
        assert_eq!(t.a, ByteSize(1024));
        assert_eq!(t.b, HumanDuration(Duration::from_secs(5)));
        assert_eq!(t.c, ByteSize(12));
    }
}
