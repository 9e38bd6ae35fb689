//! Fossil deltas (the format of the Fossil SCM, which npm's `fossil-delta`
//! and the `fossil-delta` crate apply) made with a bound on the work. The
//! owner makes one for every publication of a channel some subscriber asked
//! deltas of, inline on its shard, from data a client chose: the usual
//! encoder (a hash chain walked at every byte, each candidate extended both
//! ways) can be driven into its worst case — a source whose blocks all hash
//! alike and a target whose windows all land in that chain cost the crate
//! ~160 ms per 32 KB. Here every step of the search is counted against a
//! budget proportional to the bytes compared; past it the encoder gives up
//! and the publication goes whole. Pure: no I/O, no clock.

/// Bytes hashed per block of the source (and per window of the target).
const BLOCK: usize = 16;

/// Candidates of one hash chain compared per window at most.
const CHAIN_LIMIT: usize = 64;

/// Work units allowed per byte of source and target together: a unit is a
/// chain step, a window compared, or a byte compared while extending a
/// match. Benign JSON updates spend 2–4 per byte.
const WORK_PER_BYTE: usize = 16;

/// Work units allowed per delta whatever the sizes (~1 ms here): two
/// 64 KiB publications would otherwise allow 2M, several milliseconds of
/// the shard for each publication of an HTTP batch. A benign update of that
/// size needs about a quarter of it.
const MAX_WORK: usize = 512 * 1024;

/// The fossil delta turning `source` into `target`, or `None` when finding
/// it would cost more than the budget or it would not be smaller than
/// `target` itself (then the publication should go whole).
pub fn delta(source: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let budget = Budget((WORK_PER_BYTE * (source.len() + target.len())).min(MAX_WORK));
    encode(&BlockIndex::new(source), target, budget)
}

/// [`delta`] from the source's `index`, spending at most `budget`.
fn encode(index: &BlockIndex<'_>, target: &[u8], mut budget: Budget) -> Option<Vec<u8>> {
    let source = index.source;
    let mut out = Vec::with_capacity(target.len() / 4 + 32);
    push_b64(&mut out, target.len());
    out.push(b'\n');
    if source.len() <= BLOCK {
        push_literal(&mut out, target);
    } else {
        let mut base = 0;
        while base + BLOCK < target.len() {
            let (literal, copy) = index.next_copy(target, base, &mut budget)?;
            match copy {
                Some(Copy { offset, len }) => {
                    push_literal(&mut out, &target[base..base + literal]);
                    push_b64(&mut out, len);
                    out.push(b'@');
                    push_b64(&mut out, offset);
                    out.push(b',');
                    base += literal + len;
                }
                None => {
                    push_literal(&mut out, &target[base..]);
                    base = target.len();
                }
            }
            if out.len() >= target.len() {
                return None;
            }
        }
        push_literal(&mut out, &target[base..]);
    }
    push_b64(&mut out, checksum(target) as usize);
    out.push(b';');
    (out.len() < target.len()).then_some(out)
}

/// Work left; spending past zero ends the search.
struct Budget(usize);

impl Budget {
    fn spend(&mut self, units: usize) -> Option<()> {
        self.0 = self.0.checked_sub(units)?;
        Some(())
    }
}

/// A copy from the source: `len` bytes at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Copy {
    offset: usize,
    len: usize,
}

/// The source's blocks by the hash of their bytes, in chains.
struct BlockIndex<'a> {
    source: &'a [u8],
    /// First block of each bucket's chain (`NONE`: empty).
    heads: Vec<u32>,
    /// The next block of the same chain, per block.
    next: Vec<u32>,
    mask: usize,
}

const NONE: u32 = u32::MAX;

impl<'a> BlockIndex<'a> {
    fn new(source: &'a [u8]) -> Self {
        let blocks = source.len() / BLOCK;
        let buckets = blocks.next_power_of_two();
        let mut index = BlockIndex {
            source,
            heads: vec![NONE; buckets],
            next: vec![NONE; blocks],
            mask: buckets - 1,
        };
        for block in 0..blocks {
            let bucket = index.bucket(RollingHash::of(&source[block * BLOCK..]));
            index.next[block] = index.heads[bucket];
            index.heads[bucket] = block as u32;
        }
        index
    }

    fn bucket(&self, hash: RollingHash) -> usize {
        // Fibonacci hashing spreads the weak rolling sums over the buckets.
        (hash.value().wrapping_mul(0x9E37_79B1) >> 7) as usize & self.mask
    }

    /// From `base`, the first worthwhile copy: how many literal bytes come
    /// before it and the copy, or `None` when no window up to the end of
    /// `target` finds one. `None` overall: the budget ran out.
    fn next_copy(
        &self,
        target: &[u8],
        base: usize,
        budget: &mut Budget,
    ) -> Option<(usize, Option<Copy>)> {
        let mut hash = RollingHash::of(&target[base..]);
        let mut window = 0;
        loop {
            let at = base + window;
            let mut best: Option<(usize, Copy)> = None;
            let mut block = self.heads[self.bucket(hash)];
            let mut steps = 0;
            while block != NONE && steps < CHAIN_LIMIT {
                steps += 1;
                budget.spend(1)?;
                let from = block as usize * BLOCK;
                block = self.next[from / BLOCK];
                if self.source[from..from + BLOCK] != target[at..at + BLOCK] {
                    continue;
                }
                let (back, forward) = self.extend(target, base, at, from, budget)?;
                let copy = Copy {
                    offset: from - back,
                    len: back + BLOCK + forward,
                };
                let literal = window - back;
                let cost = digits(literal) + digits(copy.len) + digits(copy.offset) + 3;
                if copy.len > cost && best.is_none_or(|(_, b)| copy.len > b.len) {
                    best = Some((literal, copy));
                    if at + BLOCK + forward == target.len() {
                        break; // nothing can copy more than the rest
                    }
                }
            }
            if let Some((literal, copy)) = best {
                return Some((literal, Some(copy)));
            }
            if at + BLOCK >= target.len() {
                return Some((target.len() - base, None));
            }
            hash.roll(target[at], target[at + BLOCK]);
            window += 1;
        }
    }

    /// How far the match of `target[at..at + BLOCK]` with
    /// `source[from..from + BLOCK]` extends backwards (not before `base`)
    /// and forwards, each byte compared spent from `budget`.
    fn extend(
        &self,
        target: &[u8],
        base: usize,
        at: usize,
        from: usize,
        budget: &mut Budget,
    ) -> Option<(usize, usize)> {
        let forward = self.source[from + BLOCK..]
            .iter()
            .zip(&target[at + BLOCK..])
            .take_while(|(s, t)| s == t)
            .count();
        let back = self.source[..from]
            .iter()
            .rev()
            .zip(target[base..at].iter().rev())
            .take_while(|(s, t)| s == t)
            .count();
        budget.spend(1 + forward + back)?;
        Some((back, forward))
    }
}

/// The rolling hash of a `BLOCK`-byte window: Adler-like sums of its bytes
/// and of their running sums.
#[derive(Clone, Copy)]
struct RollingHash {
    sum: u16,
    weighted: u16,
}

impl RollingHash {
    /// The hash of `bytes[..BLOCK]`.
    fn of(bytes: &[u8]) -> Self {
        let mut hash = RollingHash {
            sum: 0,
            weighted: 0,
        };
        for &byte in &bytes[..BLOCK] {
            hash.sum = hash.sum.wrapping_add(byte as u16);
            hash.weighted = hash.weighted.wrapping_add(hash.sum);
        }
        hash
    }

    /// The window moved one byte: `out` left it, `into` entered.
    fn roll(&mut self, out: u8, into: u8) {
        self.sum = self.sum.wrapping_add(into as u16).wrapping_sub(out as u16);
        self.weighted = self
            .weighted
            .wrapping_sub((BLOCK as u16).wrapping_mul(out as u16))
            .wrapping_add(self.sum);
    }

    fn value(self) -> u32 {
        self.sum as u32 | (self.weighted as u32) << 16
    }
}

/// Appends `bytes` as a literal segment (`len:bytes`), if any.
fn push_literal(out: &mut Vec<u8>, bytes: &[u8]) {
    if !bytes.is_empty() {
        push_b64(out, bytes.len());
        out.push(b':');
        out.extend_from_slice(bytes);
    }
}

/// The base-64 digits of the format, most significant first.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

fn push_b64(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 11];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = DIGITS[n & 63];
        n >>= 6;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Base-64 digits of `n`.
fn digits(n: usize) -> usize {
    let mut count = 1;
    let mut rest = n >> 6;
    while rest > 0 {
        count += 1;
        rest >>= 6;
    }
    count
}

/// The format's checksum: the sum of `bytes` as big-endian 32-bit words,
/// the last one padded with zeros.
fn checksum(bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(4);
    let mut sum = 0u32;
    for word in &mut words {
        sum = sum.wrapping_add(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut last = [0u8; 4];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    sum.wrapping_add(u32::from_be_bytes(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON order book of `levels` levels, `version` changing some.
    fn book(levels: usize, version: usize) -> Vec<u8> {
        let mut text = String::from("{\"bids\":[");
        for level in 0..levels {
            let size = if level % 7 == version % 7 {
                version
            } else {
                level
            };
            text.push_str(&format!("[{}.{:02},{}],", 100 + level, level % 100, size));
        }
        text.push_str("[0,0]]}");
        text.into_bytes()
    }

    fn applied(source: &[u8], delta: &[u8]) -> Vec<u8> {
        fossil_delta::apply(source, delta).expect("a valid fossil delta")
    }

    #[test]
    fn deltas_of_updates_apply_and_are_small() {
        // The largest publications still get their delta within MAX_WORK.
        let (old, new) = (book(4000, 1), book(4000, 2));
        assert!(new.len() > 50_000, "{}", new.len());
        let large = delta(&old, &new).expect("a delta of a large book");
        assert_eq!(applied(&old, &large), new);
        let (old, new) = (book(300, 1), book(300, 2));
        let delta = delta(&old, &new).expect("a delta");
        assert_eq!(applied(&old, &delta), new);
        assert!(
            delta.len() * 4 < new.len(),
            "{} of {}",
            delta.len(),
            new.len()
        );
    }

    #[test]
    fn any_pair_round_trips_or_goes_whole() {
        // A seeded walk over sizes and edits, including tiny sources, equal
        // texts, prefixes, suffixes and unrelated bytes.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..400 {
            let len = (next() % 3000) as usize;
            let source: Vec<u8> = (0..len)
                .map(|_| b"ab{}\":,0123"[next() as usize % 11])
                .collect();
            let mut target = source.clone();
            for _ in 0..next() % 6 {
                let at = next() as usize % (target.len() + 1);
                match next() % 3 {
                    0 => target.insert(at, next() as u8),
                    1 if at < target.len() => {
                        target.remove(at);
                    }
                    _ => target.truncate(at),
                }
            }
            if let Some(delta) = delta(&source, &target) {
                assert_eq!(applied(&source, &delta), target);
                assert!(delta.len() < target.len());
            }
        }
    }

    #[test]
    fn the_encoding_matches_the_format() {
        assert_eq!(delta(b"tiny", b"0123456789abcdefghij0123456789"), None);
        let mut out = Vec::new();
        push_b64(&mut out, 0);
        push_b64(&mut out, 64 * 64 + 63);
        assert_eq!(out, b"010~");
        assert_eq!((digits(0), digits(63), digits(64)), (1, 1, 2));
        assert_eq!(checksum(b"\x00\x00\x00\x01\x02"), 0x0200_0001);
    }

    /// The attack, with the hash on the attacker's side: every block of
    /// the source in one chain (as inputs crafted against the crate's weak
    /// hash were) and the target's first half matching no block, so that
    /// each of its windows walks the chain; its second half could be
    /// copied. Unbounded, the search finds that delta after ~2M steps; the
    /// budget ends it first and the publication goes whole.
    #[test]
    fn a_search_the_hash_cannot_help_ends_at_the_budget() {
        let source = vec![b'a'; 32 * 1024];
        let mut target: Vec<u8> = b"aaaab`aaaab`aaaa"
            .iter()
            .copied()
            .cycle()
            .take(32 * 1024)
            .collect();
        target.extend_from_slice(&source);
        let mut one_chain = BlockIndex::new(&source);
        let blocks = one_chain.next.len();
        one_chain.heads = vec![blocks as u32 - 1];
        one_chain.mask = 0;
        for block in 0..blocks {
            one_chain.next[block] = block.checked_sub(1).map_or(NONE, |b| b as u32);
        }
        let unbounded = encode(&one_chain, &target, Budget(usize::MAX)).expect("a delta exists");
        assert_eq!(applied(&source, &unbounded), target);
        let budget = (WORK_PER_BYTE * (source.len() + target.len())).min(MAX_WORK);
        assert_eq!(encode(&one_chain, &target, Budget(budget)), None);
        // Through the real hash the same pair is bounded too.
        if let Some(delta) = delta(&source, &target) {
            assert_eq!(applied(&source, &delta), target);
        }
    }

    #[test]
    fn identical_texts_give_one_copy() {
        let text = book(100, 1);
        let same = delta(&text, &text).expect("a delta");
        assert_eq!(applied(&text, &same), text);
        // The length, one copy of it all, the checksum.
        assert!(same.len() < 20, "{}", String::from_utf8_lossy(&same));
        assert_eq!(same.iter().filter(|&&b| b == b'@').count(), 1);
    }

    #[test]
    fn an_empty_source_or_target_goes_whole() {
        let text = book(10, 1);
        assert_eq!(delta(b"", &text), None);
        assert_eq!(delta(&text, b""), None);
        assert_eq!(delta(b"", b""), None);
    }

    #[test]
    fn a_source_of_one_block_or_less_goes_whole() {
        let source = b"0123456789abcdef";
        assert_eq!(source.len(), BLOCK);
        assert_eq!(delta(source, &source.repeat(8)), None);
    }

    #[test]
    fn a_source_just_over_one_block_can_be_copied() {
        let source = b"0123456789abcdefg";
        let delta = delta(source, source).expect("a copy pays");
        assert_eq!(applied(source, &delta), source);
    }

    #[test]
    fn an_append_is_a_copy_and_a_literal() {
        let source = book(50, 1);
        let mut target = source.clone();
        target.extend_from_slice(b",\"tail\"");
        let delta = delta(&source, &target).expect("a delta");
        assert_eq!(applied(&source, &delta), target);
        let text = String::from_utf8_lossy(&delta);
        assert!(text.contains("@0,"), "a copy from the start: {text}");
        assert!(
            text.contains(":,\"tail\""),
            "the new bytes as a literal: {text}"
        );
    }

    #[test]
    fn a_target_shorter_than_the_source_applies() {
        let source = book(200, 1);
        let prefix = &source[..source.len() / 2];
        let suffix = &source[source.len() / 3..];
        for target in [prefix, suffix] {
            let delta = delta(&source, target).expect("a delta");
            assert_eq!(applied(&source, &delta), target);
        }
    }

    #[test]
    fn digits_counts_what_push_b64_writes() {
        for n in [0, 1, 63, 64, 4095, 4096, 1 << 30, usize::MAX] {
            let mut out = Vec::new();
            push_b64(&mut out, n);
            assert_eq!(out.len(), digits(n), "{n}");
            assert!(out.iter().all(|b| DIGITS.contains(b)));
        }
    }
}
