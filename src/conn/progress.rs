//! Whether a client is in the middle of a WebSocket message, read from the
//! bytes it sends: a data frame whose payload has not all arrived, or a
//! fragmented message whose final frame has not come. The session uses it
//! to give an unfinished message a deadline (`message-timeout`) and to count
//! what it holds against the shard's memory budget. It follows frame
//! boundaries only; validating frames stays with the reader. Pure: fed byte
//! slices, no I/O, no clock.

use shardcast_wire::header::{self, MAX_HEADER};

/// Frame-boundary state of one client's byte stream (40 bytes: see the
/// test `stays_small`).
#[derive(Debug, Default, Clone)]
pub struct MessageProgress {
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Payload bytes of the unfinished message received so far.
    message_bytes: u64,
    /// The header being read, when a frame's header is split over reads.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The current frame (header read, payload not done) is a data frame.
    in_data_frame: bool,
    /// ... and its FIN bit is set.
    frame_is_final: bool,
    /// A non-final data frame has ended: the message awaits continuations.
    fragmented: bool,
}

/// What one [`MessageProgress::feed`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// At least one message was completed by these bytes.
    pub completed: bool,
}

impl MessageProgress {
    /// A message has begun and not ended.
    pub fn in_progress(&self) -> bool {
        self.fragmented || self.in_data_frame
    }

    /// Payload bytes of the unfinished message received so far (0 when none
    /// is in progress).
    pub fn unfinished_bytes(&self) -> u64 {
        if self.in_progress() {
            self.message_bytes
        } else {
            0
        }
    }

    /// Follows `bytes`, the next ones the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Fed {
        let mut fed = Fed { completed: false };
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= take;
                if self.in_data_frame {
                    self.message_bytes += take;
                }
                bytes = &bytes[take as usize..];
                if self.payload_left == 0 {
                    fed.completed |= self.frame_done();
                }
                continue;
            }
            // Not empty (the loop's condition); a header is at most
            // MAX_HEADER bytes, so header_len stays in bounds.
            self.header[self.header_len as usize] = bytes[0];
            bytes = &bytes[1..];
            self.header_len += 1;
            match header::parse(&self.header[..self.header_len as usize]) {
                Ok(None) => {}
                Ok(Some((frame, _))) => {
                    self.header_len = 0;
                    self.payload_left = frame.payload_len;
                    // Control frames (close, ping, pong) may come between
                    // fragments and are not part of the message.
                    self.in_data_frame = !frame.opcode.is_control();
                    self.frame_is_final = frame.fin;
                    if self.payload_left == 0 {
                        fed.completed |= self.frame_done();
                    }
                }
                // Not a frame the reader will accept: it closes the
                // connection; nothing to follow.
                Err(_) => self.header_len = 0,
            }
        }
        fed
    }

    /// The current frame's payload is complete. Returns whether a message
    /// ended with it.
    fn frame_done(&mut self) -> bool {
        if !std::mem::take(&mut self.in_data_frame) {
            return false;
        }
        self.fragmented = !self.frame_is_final;
        if self.fragmented {
            return false;
        }
        self.message_bytes = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (mask key zero: the payload is as given), from
    /// the codec.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let opcode = shardcast_wire::OpCode::from_bits(opcode).unwrap();
        shardcast_wire::encode::client_frame(opcode, payload, !fin, [0; 4])
    }

    #[test]
    fn stays_small() {
        // Every connection carries one (docs/design.md's memory table).
        assert!(std::mem::size_of::<MessageProgress>() <= 40);
    }

    #[test]
    fn whole_messages_leave_nothing_in_progress() {
        let mut progress = MessageProgress::default();
        let mut bytes = frame(true, 1, b"hello");
        bytes.extend(frame(true, 2, &[7; 300]));
        bytes.extend(frame(true, 9, b"ping"));
        bytes.extend(frame(true, 1, &[b'x'; 70_000]));
        assert!(progress.feed(&bytes).completed);
        assert!(!progress.in_progress());
        assert_eq!(progress.unfinished_bytes(), 0);
    }

    #[test]
    fn a_frame_split_anywhere_is_in_progress_until_its_last_byte() {
        let bytes = frame(true, 1, &[b'y'; 1000]);
        for cut in 1..bytes.len() {
            let mut progress = MessageProgress::default();
            let first = progress.feed(&bytes[..cut]);
            assert!(!first.completed);
            // Two header bytes tell the frame's kind; its data has begun.
            assert_eq!(progress.in_progress(), cut >= 8, "cut at {cut}");
            assert!(progress.feed(&bytes[cut..]).completed, "cut at {cut}");
            assert!(!progress.in_progress());
        }
    }

    #[test]
    fn fragments_with_control_frames_between_are_one_message() {
        let mut progress = MessageProgress::default();
        assert!(!progress.feed(&frame(false, 1, &[b'a'; 600])).completed);
        assert!(progress.in_progress());
        assert_eq!(progress.unfinished_bytes(), 600);
        progress.feed(&frame(true, 0xA, b"pong"));
        progress.feed(&frame(true, 9, b""));
        assert!(progress.in_progress(), "control frames do not end it");
        assert_eq!(progress.unfinished_bytes(), 600);
        progress.feed(&frame(false, 0, &[b'b'; 100]));
        assert_eq!(progress.unfinished_bytes(), 700);
        assert!(progress.feed(&frame(true, 0, b"")).completed);
        assert!(!progress.in_progress());
    }

    #[test]
    fn a_new_message_can_start_in_the_read_that_ends_one() {
        let mut progress = MessageProgress::default();
        let mut bytes = frame(true, 1, b"done");
        let next = frame(true, 1, &[b'z'; 200]);
        bytes.extend_from_slice(&next[..50]);
        assert!(progress.feed(&bytes).completed);
        assert!(progress.in_progress());
        assert_eq!(progress.unfinished_bytes(), 50 - 8);
    }
}
