//! The generator's side of permessage-deflate: a subscriber that
//! negotiated it inflates each compressed message, keeping the LZ77 window
//! between messages unless the server said `server_no_context_takeover`
//! (shardcast does; Node `ws` by default does not). Counting and timing
//! need the message's stamp, so every compressed message is inflated.

use flate2::{Decompress, FlushDecompress};

/// One connection's inflater, made on its first compressed message.
pub struct MessageInflater {
    decompress: Option<Box<Decompress>>,
    /// Each message stands alone (`server_no_context_takeover`).
    reset_each: bool,
    out: Vec<u8>,
}

impl MessageInflater {
    /// For the extensions the server agreed to; `None` without
    /// permessage-deflate.
    pub fn for_agreement(extensions: Option<&str>) -> Option<Self> {
        let agreed = extensions?;
        agreed
            .contains("permessage-deflate")
            .then(|| MessageInflater {
                decompress: None,
                reset_each: agreed.contains("server_no_context_takeover"),
                out: Vec::new(),
            })
    }

    /// The message `payload` inflates to, or `None` if it does not.
    pub fn inflate(&mut self, payload: &[u8]) -> Option<&[u8]> {
        let decompress = self
            .decompress
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        if self.reset_each {
            decompress.reset(false);
        }
        self.out.clear();
        let tail = [0u8, 0, 0xff, 0xff];
        for input in [payload, &tail[..]] {
            let mut used = 0;
            loop {
                if self.out.capacity() - self.out.len() < 4096 {
                    self.out.reserve(self.out.capacity().max(16 << 10));
                }
                let before = decompress.total_in();
                let room = self.out.capacity() - self.out.len();
                let written = self.out.len();
                decompress
                    .decompress_vec(&input[used..], &mut self.out, FlushDecompress::Sync)
                    .ok()?;
                used += (decompress.total_in() - before) as usize;
                let filled = self.out.len() - written == room;
                if used == input.len() && !filled {
                    break;
                }
            }
        }
        Some(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;

    #[test]
    fn inflates_with_and_without_context_takeover() {
        let message = b"hello hello hello hello, said the publisher".repeat(50);
        for agreed in [
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate",
        ] {
            let mut inflater = MessageInflater::for_agreement(Some(agreed)).unwrap();
            let mut compress = Compress::new(Compression::new(3), false);
            for _ in 0..3 {
                if agreed.contains("no_context") {
                    compress.reset();
                }
                let mut wire = Vec::with_capacity(4096);
                compress
                    .compress_vec(&message, &mut wire, FlushCompress::Sync)
                    .unwrap();
                wire.truncate(wire.len() - 4);
                assert_eq!(inflater.inflate(&wire).unwrap(), &message[..]);
            }
        }
        assert!(MessageInflater::for_agreement(None).is_none());
    }
}
