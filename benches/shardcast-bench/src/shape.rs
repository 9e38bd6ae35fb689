//! What a publication's data looks like, for the `bytes` benchmark: bytes
//! on the wire depend on how compressible a message is and how much it
//! changed since the last one, so each shape mimics a real kind of traffic.
//! Every shape starts with the generator's stamp (`{"s":..,"i":..,"t":..`)
//! so deliveries are counted and timed the same way.
//!
//! - `pad`: the stamp padded with `x` to `--size` (the other scenarios'
//!   payload; unrealistically compressible).
//! - `tick`: a ~100 B market tick, numbers changing every time.
//! - `chat`: a ~1 KB chat line of words drawn at random from a vocabulary,
//!   as compressible as English text.
//! - `book`: a ~10 KB order book of 320 levels a side, of which ten
//!   change per update: what delta compression is for.

use std::fmt::Write as _;

/// The kind of data publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    Pad,
    Tick,
    Chat,
    Book,
}

/// Levels per side of the `book` shape.
const LEVELS: usize = 320;
/// Levels changed per `book` update.
const CHANGED_PER_UPDATE: usize = 10;

const WORDS: &[&str] = &[
    "the", "a", "we", "you", "they", "meeting", "tomorrow", "at", "noon", "lunch", "is", "are",
    "still", "on", "for", "deploy", "friday", "please", "review", "my", "pull", "request",
    "thanks", "sounds", "good", "can", "someone", "check", "the", "build", "broke", "again",
    "after", "merge", "customer", "reported", "an", "issue", "with", "login", "page", "fixed",
    "in", "next", "release", "coffee", "anyone", "going", "to", "office", "today", "working",
    "from", "home", "and", "but", "numbers", "look", "great", "this", "week", "sales", "up",
    "percent", "let's", "sync", "later",
];

/// Makes one publisher's payloads (a `book` keeps its state between them).
pub struct PayloadMaker {
    shape: Shape,
    size: usize,
    rng: u64,
    /// `book`: (price, quantity) per level, bids then asks.
    book: Vec<(u32, u32)>,
}

impl PayloadMaker {
    pub fn new(shape: Shape, size: usize, publisher: u32) -> Self {
        let mut maker = PayloadMaker {
            shape,
            size,
            rng: 0x9e37_79b9_7f4a_7c15 ^ (u64::from(publisher) << 32 | 1),
            book: Vec::new(),
        };
        if shape == Shape::Book {
            maker.book = (0..2 * LEVELS)
                .map(|level| {
                    let price = if level < LEVELS {
                        1_000_000 - level as u32 * 25
                    } else {
                        1_000_025 + (level - LEVELS) as u32 * 25
                    };
                    (price, 100 + maker.next() as u32 % 10_000)
                })
                .collect();
        }
        maker
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast and good enough for made-up data.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Writes publication `seq` of `publisher`, stamped at `nanos`.
    pub fn make(&mut self, seq: u64, publisher: u32, nanos: u64, out: &mut Vec<u8>) {
        if self.shape == Shape::Pad {
            return crate::target::payload(seq, publisher, nanos, self.size, out);
        }
        let mut text = String::with_capacity(self.size.max(128));
        let _ = write!(text, "{{\"s\":{seq},\"i\":{publisher},\"t\":{nanos},");
        match self.shape {
            Shape::Pad => unreachable!("handled above"),
            Shape::Tick => {
                let r = self.next();
                let bid = 18_000 + (r % 2_000) as u32;
                let _ = write!(
                    text,
                    "\"sym\":\"AAPL\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"vol\":{}}}",
                    bid / 100,
                    bid % 100,
                    (bid + 3) / 100,
                    (bid + 3) % 100,
                    r >> 40
                );
            }
            Shape::Chat => {
                text.push_str("\"user\":\"alice\",\"text\":\"");
                while text.len() < 1000 {
                    let word = WORDS[self.next() as usize % WORDS.len()];
                    text.push_str(word);
                    text.push(' ');
                }
                text.push_str("\"}");
            }
            Shape::Book => {
                for _ in 0..CHANGED_PER_UPDATE {
                    let level = self.next() as usize % self.book.len();
                    self.book[level].1 = 100 + self.next() as u32 % 10_000;
                }
                text.push_str("\"sym\":\"AAPL\",\"bids\":[");
                for (side, levels) in self.book.chunks(LEVELS).enumerate() {
                    if side == 1 {
                        text.push_str("],\"asks\":[");
                    }
                    for (i, (price, qty)) in levels.iter().enumerate() {
                        let comma = if i > 0 { "," } else { "" };
                        let _ = write!(text, "{comma}[{}.{:02},{qty}]", price / 100, price % 100);
                    }
                }
                text.push_str("]}");
            }
        }
        out.clear();
        out.extend_from_slice(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_is_json_with_the_stamp_and_about_its_size() {
        for (shape, low, high) in [
            (Shape::Tick, 60, 140),
            (Shape::Chat, 900, 1100),
            (Shape::Book, 8_000, 12_000),
        ] {
            let mut maker = PayloadMaker::new(shape, 100, 3);
            let mut out = Vec::new();
            maker.make(7, 3, 99, &mut out);
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                (value["s"].as_u64(), value["i"].as_u64()),
                (Some(7), Some(3))
            );
            assert!(
                (low..high).contains(&out.len()),
                "{shape:?}: {} B",
                out.len()
            );
            let stamp = crate::target::find_stamp(&out).unwrap();
            assert_eq!((stamp.seq, stamp.nanos), (7, 99));
        }
    }

    #[test]
    fn a_book_update_changes_a_few_levels() {
        let mut maker = PayloadMaker::new(Shape::Book, 0, 1);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        maker.make(1, 1, 0, &mut a);
        maker.make(2, 1, 0, &mut b);
        let levels = |bytes: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let mut all = v["bids"].as_array().unwrap().clone();
            all.extend(v["asks"].as_array().unwrap().iter().cloned());
            all
        };
        let changed = levels(&a)
            .iter()
            .zip(levels(&b).iter())
            .filter(|(x, y)| x != y)
            .count();
        assert!((1..=CHANGED_PER_UPDATE).contains(&changed), "{changed}");
    }
}
