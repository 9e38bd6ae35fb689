//! Decoding what a client sends (RFC 6455 §5–§8, server role), fed bytes as
//! they are read: frames are unmasked in place, fragmented messages are
//! reassembled with control frames between their fragments, limits are
//! checked from each header before anything is kept, text is validated as
//! it arrives, close payloads are checked. A frame found whole in the bytes
//! passed in is returned as a slice of them (no copy); only a frame split
//! over reads, or a message split over frames, is kept here, in storage
//! freed once the message has been handed out. Pure: no I/O, no clock.

use crate::{
    close::{self, CloseError},
    header::{self, apply_mask, FrameHeader, HeaderError, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER},
    utf8::Utf8Validator,
};

/// What the decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, all its fragments together (and so largest frame),
    /// in payload bytes; over it the connection closes with 1009, decided
    /// from the header before any of the payload is kept.
    pub max_message: usize,
    /// Whether RSV1 may be set, on a message's first frame only: an
    /// extension that uses it (permessage-deflate) was negotiated.
    pub rsv1: bool,
}

/// One thing a client said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message, validated as UTF-8.
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A whole message whose first frame had RSV1 (compressed by the
    /// negotiated extension): handed out as received; the caller inflates
    /// it, and checks a text message's UTF-8 after inflating.
    Compressed {
        text: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The client's close frame: its code and reason, if it gave one. The
    /// decoder reads nothing after it.
    Close(Option<(u16, &'a str)>),
}

/// Why the client's bytes end the connection, with the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A header that cannot be read (reserved opcode, length over 2^63).
    Header(HeaderError),
    /// A client frame without a masking key (§5.1).
    Unmasked,
    /// RSV2 or RSV3, or RSV1 without an extension that uses it, or on a
    /// continuation or control frame.
    ReservedBits,
    /// A control frame with FIN clear or a payload over 125 bytes (§5.5).
    BadControlFrame,
    /// A continuation frame with no message begun.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished.
    ExpectedContinuation,
    /// A message over [`Limits::max_message`].
    TooLarge,
    /// A text message (or close reason) that is not UTF-8.
    InvalidUtf8,
    /// A close payload of one byte, or with a code no endpoint may send.
    BadClose,
}

impl DecodeError {
    /// The status code of the close frame that answers this error.
    pub fn close_code(self) -> u16 {
        match self {
            DecodeError::TooLarge => 1009,
            DecodeError::InvalidUtf8 => 1007,
            _ => 1002,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            DecodeError::Header(HeaderError::ReservedOpcode(_)) => "reserved opcode",
            DecodeError::Header(HeaderError::LengthTooLarge) => "frame length over 2^63",
            DecodeError::Unmasked => "client frame not masked",
            DecodeError::ReservedBits => "reserved bits set",
            DecodeError::BadControlFrame => "fragmented or oversized control frame",
            DecodeError::UnexpectedContinuation => "continuation frame without a message",
            DecodeError::ExpectedContinuation => "new message inside a fragmented one",
            DecodeError::TooLarge => "message too large",
            DecodeError::InvalidUtf8 => "invalid UTF-8",
            DecodeError::BadClose => "invalid close frame",
        };
        f.write_str(text)
    }
}

impl std::error::Error for DecodeError {}

/// What one [`Decoder::decode`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Bytes of the input used; the caller passes the rest next time.
    pub consumed: usize,
    /// What the client said, if these bytes completed something.
    pub event: Option<Event<'a>>,
}

/// The kind of the message being reassembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    text: bool,
    compressed: bool,
    /// Payload bytes received so far, all its frames together.
    len: usize,
}

/// The frame whose payload is being read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    header: FrameHeader,
    /// Payload bytes read so far.
    read: u64,
}

/// Decoding state of one client connection: 24 bytes (a test holds it to
/// that). A frame found whole
/// in the bytes handed in is decoded on the spot; only while a frame or
/// message is split over reads does the connection hold an [`Assembler`]
/// (boxed), dropped again once that message has been handed out.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    assembler: Option<Box<Assembler>>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            assembler: None,
        }
    }

    /// What this decoder accepts.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a message (or a frame) has begun and not ended: the caller
    /// may give it a deadline.
    pub fn in_progress(&self) -> bool {
        self.assembler.as_ref().is_some_and(|a| a.in_progress())
    }

    /// Bytes this decoder holds between reads (its assembler and what it
    /// keeps).
    pub fn held_bytes(&self) -> usize {
        self.assembler
            .as_ref()
            .map_or(0, |a| std::mem::size_of::<Assembler>() + a.held_bytes())
    }

    /// Decodes from the start of `input` (which it unmasks in place) until
    /// it completes one event or uses all of `input`. After an error or a
    /// close frame, it consumes everything and returns nothing.
    pub fn decode<'a>(&'a mut self, input: &'a mut [u8]) -> Result<Decoded<'a>, DecodeError> {
        if self
            .assembler
            .as_mut()
            .is_some_and(|a| a.release_and_is_idle())
        {
            self.assembler = None;
        }
        if self.assembler.is_none() {
            let found = whole_frame(self.limits, input);
            let ended = || Some(Box::new(Assembler::ended(self.limits)));
            match found {
                Ok(Some((header, start, end))) => {
                    let event = match whole_event(&header, &mut input[start..end]) {
                        Ok(event) => event,
                        Err(error) => {
                            self.assembler = ended();
                            return Err(error);
                        }
                    };
                    if matches!(event, Event::Close(_)) {
                        self.assembler = ended();
                    }
                    return Ok(Decoded {
                        consumed: end,
                        event: Some(event),
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    self.assembler = ended();
                    return Err(error);
                }
            }
        }
        let limits = self.limits;
        let assembler = self
            .assembler
            .get_or_insert_with(|| Box::new(Assembler::new(limits)));
        assembler.decode(input)
    }
}

/// The frame at the start of `input`, when it is whole there and is a whole
/// message (or a control frame): its checked header and where its payload
/// starts and ends. `None`: not whole here, or the first of several frames;
/// the assembler takes it.
fn whole_frame(
    limits: Limits,
    input: &[u8],
) -> Result<Option<(FrameHeader, usize, usize)>, DecodeError> {
    let Some((header, start)) = header::parse(input).map_err(DecodeError::Header)? else {
        return Ok(None);
    };
    check_header(&header, None, limits)?;
    let single = header.opcode.is_control() || header.fin;
    let end = start as u64 + header.payload_len;
    if !single || end > input.len() as u64 {
        return Ok(None);
    }
    Ok(Some((header, start, end as usize)))
}

/// The event of a whole frame (see [`whole_frame`]) whose payload is
/// `payload`: unmasked in place, then checked.
fn whole_event<'a>(header: &FrameHeader, payload: &'a mut [u8]) -> Result<Event<'a>, DecodeError> {
    apply_mask(payload, header.mask.unwrap_or_default(), 0);
    let payload: &'a [u8] = payload;
    let event = match header.opcode {
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        OpCode::Close => Event::Close(parse_close(payload)?),
        opcode if header.rsv1 => Event::Compressed {
            text: opcode == OpCode::Text,
            payload,
        },
        OpCode::Text => {
            Event::Text(std::str::from_utf8(payload).map_err(|_| DecodeError::InvalidUtf8)?)
        }
        _ => Event::Binary(payload),
    };
    Ok(event)
}

/// Reads a close payload, as the errors the decoder reports: a reason that
/// is not UTF-8 is 1007, any other fault 1002.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, DecodeError> {
    close::parse(payload).map_err(|e| match e {
        CloseError::BadReason => DecodeError::InvalidUtf8,
        _ => DecodeError::BadClose,
    })
}

/// Checks a new frame's header against the rules and the limits, given the
/// message in progress (if any).
fn check_header(
    header: &FrameHeader,
    message: Option<Message>,
    limits: Limits,
) -> Result<(), DecodeError> {
    if header.mask.is_none() {
        return Err(DecodeError::Unmasked);
    }
    if header.rsv2 || header.rsv3 {
        return Err(DecodeError::ReservedBits);
    }
    match header.opcode {
        opcode if opcode.is_control() => {
            if !header.fin || header.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(DecodeError::BadControlFrame);
            }
            if header.rsv1 {
                return Err(DecodeError::ReservedBits);
            }
        }
        OpCode::Continuation => {
            let message = message.ok_or(DecodeError::UnexpectedContinuation)?;
            if header.rsv1 {
                return Err(DecodeError::ReservedBits);
            }
            if message.len as u64 + header.payload_len > limits.max_message as u64 {
                return Err(DecodeError::TooLarge);
            }
        }
        _ => {
            if message.is_some() {
                return Err(DecodeError::ExpectedContinuation);
            }
            if header.rsv1 && !limits.rsv1 {
                return Err(DecodeError::ReservedBits);
            }
            if header.payload_len > limits.max_message as u64 {
                return Err(DecodeError::TooLarge);
            }
        }
    }
    Ok(())
}

/// The full decoding state, for frames and messages split over reads.
#[derive(Debug)]
struct Assembler {
    limits: Limits,
    /// A header split over reads, so far.
    header: [u8; MAX_HEADER],
    header_len: u8,
    frame: Option<Frame>,
    message: Option<Message>,
    /// The payload of a message split over frames or reads, or of a control
    /// frame split over reads; freed once handed out.
    kept: Vec<u8>,
    /// A control frame's payload split over reads (at most 125 bytes).
    kept_control: Vec<u8>,
    /// `kept` was handed out by the last call: free it.
    release_kept: bool,
    /// `kept_control` was handed out by the last call: clear it (a message
    /// may still be kept in `kept`).
    release_control: bool,
    utf8: Utf8Validator,
    /// A close frame or an error was decoded: nothing more is read.
    ended: bool,
}

impl Assembler {
    fn new(limits: Limits) -> Self {
        Assembler {
            limits,
            header: [0; MAX_HEADER],
            header_len: 0,
            frame: None,
            message: None,
            kept: Vec::new(),
            kept_control: Vec::new(),
            release_kept: false,
            release_control: false,
            utf8: Utf8Validator::default(),
            ended: false,
        }
    }

    /// One that reads nothing more (after a close frame or an error).
    fn ended(limits: Limits) -> Self {
        Assembler {
            ended: true,
            ..Assembler::new(limits)
        }
    }

    fn in_progress(&self) -> bool {
        self.message.is_some() || self.frame.is_some() || self.header_len > 0
    }

    fn held_bytes(&self) -> usize {
        self.kept.capacity() + self.kept_control.capacity()
    }

    /// Frees what the last call handed out; then whether nothing is left in
    /// progress (the decoder can drop this assembler).
    fn release_and_is_idle(&mut self) -> bool {
        if std::mem::take(&mut self.release_kept) {
            self.kept = Vec::new();
        }
        if std::mem::take(&mut self.release_control) {
            self.kept_control = Vec::new();
        }
        !self.ended && !self.in_progress()
    }

    fn decode<'a>(&'a mut self, input: &'a mut [u8]) -> Result<Decoded<'a>, DecodeError> {
        self.release_and_is_idle();
        if self.ended {
            return Ok(Decoded {
                consumed: input.len(),
                event: None,
            });
        }
        let (consumed, done) = match self.step(input) {
            Ok(stepped) => stepped,
            Err(error) => {
                self.ended = true;
                return Err(error);
            }
        };
        let event = done.map(|done| self.event(done, input));
        Ok(Decoded { consumed, event })
    }

    /// The event `done` describes, borrowing its payload from where it is.
    fn event<'a>(&'a self, done: Done, input: &'a [u8]) -> Event<'a> {
        let bytes = |at: &Where| -> &'a [u8] {
            match at {
                Where::Input(range) => &input[range.clone()],
                Where::Kept => &self.kept,
                Where::KeptControl => &self.kept_control,
            }
        };
        match done {
            Done::Text(at) => {
                let payload = bytes(&at);
                // SAFETY: `step` validated these bytes as UTF-8 (piece by
                // piece with `Utf8Validator`, then `finish`) before
                // reporting `Done::Text` for them; nothing changed them since.
                Event::Text(unsafe { std::str::from_utf8_unchecked(payload) })
            }
            Done::Binary(at) => Event::Binary(bytes(&at)),
            Done::Compressed(text, at) => Event::Compressed {
                text,
                payload: bytes(&at),
            },
            Done::Ping(at) => Event::Ping(bytes(&at)),
            Done::Pong(at) => Event::Pong(bytes(&at)),
            Done::Close(None) => Event::Close(None),
            Done::Close(Some((code, at))) => {
                // After the two bytes of the code.
                let reason = bytes(&at).get(2..).unwrap_or_default();
                // SAFETY: `close::parse` checked this reason is UTF-8 in
                // `step` before it reported `Done::Close` with it.
                Event::Close(Some((code, unsafe {
                    std::str::from_utf8_unchecked(reason)
                })))
            }
        }
    }

    /// The work of [`Decoder::decode`], reporting where the completed
    /// payload is rather than borrowing it.
    fn step(&mut self, input: &mut [u8]) -> Result<(usize, Option<Done>), DecodeError> {
        let mut consumed = 0;
        let frame = match self.frame {
            Some(frame) => frame,
            None => {
                let Some((header, used)) = self.read_header(input)? else {
                    return Ok((input.len(), None));
                };
                consumed = used;
                self.start_frame(header)?
            }
        };
        let remaining = frame.header.payload_len - frame.read;
        let available = (input.len() - consumed) as u64;
        let whole_here = frame.read == 0 && available >= remaining;
        let single = frame.header.opcode.is_control()
            || (frame.header.fin && frame.header.opcode != OpCode::Continuation);
        let mask = frame.header.mask.unwrap_or_default();
        if whole_here && single {
            // The fast path: the whole frame, and the whole message, is
            // here. Unmask in place and hand out a slice of the input.
            let end = consumed + remaining as usize;
            apply_mask(&mut input[consumed..end], mask, 0);
            self.frame = None;
            let at = Where::Input(consumed..end);
            let done = self.complete(frame.header, at, &input[consumed..end])?;
            return Ok((end, done));
        }
        let take = remaining.min(available) as usize;
        let chunk = &mut input[consumed..consumed + take];
        apply_mask(chunk, mask, frame.read);
        consumed += take;
        if frame.header.opcode.is_control() {
            self.kept_control.extend_from_slice(chunk);
        } else {
            let message = self
                .message
                .as_mut()
                .ok_or(DecodeError::UnexpectedContinuation)?;
            if message.text && !message.compressed {
                self.utf8
                    .feed(chunk)
                    .map_err(|_| DecodeError::InvalidUtf8)?;
            }
            message.len += take;
            self.kept.extend_from_slice(chunk);
        }
        let read = frame.read + take as u64;
        if read < frame.header.payload_len {
            self.frame = Some(Frame { read, ..frame });
            return Ok((consumed, None));
        }
        self.frame = None;
        let at = if frame.header.opcode.is_control() {
            Where::KeptControl
        } else {
            Where::Kept
        };
        let done = self.complete(frame.header, at, &[])?;
        Ok((consumed, done))
    }

    /// Reads a header from the bytes kept from earlier reads and `input`.
    /// Returns it with the bytes of `input` it used, or `None` (all of
    /// `input` kept) when it is still incomplete.
    fn read_header(&mut self, input: &[u8]) -> Result<Option<(FrameHeader, usize)>, DecodeError> {
        if self.header_len == 0 {
            if let Some(parsed) = header::parse(input).map_err(DecodeError::Header)? {
                return Ok(Some(parsed));
            }
        }
        for (used, &byte) in input.iter().enumerate() {
            self.header[self.header_len as usize] = byte;
            self.header_len += 1;
            let parsed = header::parse(&self.header[..self.header_len as usize])
                .map_err(DecodeError::Header)?;
            if let Some((header, _)) = parsed {
                self.header_len = 0;
                return Ok(Some((header, used + 1)));
            }
        }
        Ok(None)
    }

    /// Checks a new frame's header against the rules and the limits, and
    /// begins a message if it is a message's first frame.
    fn start_frame(&mut self, header: FrameHeader) -> Result<Frame, DecodeError> {
        check_header(&header, self.message, self.limits)?;
        if !header.opcode.is_control() && header.opcode != OpCode::Continuation {
            self.message = Some(Message {
                text: header.opcode == OpCode::Text,
                compressed: header.rsv1,
                len: 0,
            });
        }
        let frame = Frame { header, read: 0 };
        self.frame = Some(frame);
        Ok(frame)
    }

    /// A frame's payload is all read: at `at`, and in `here` when it is in
    /// the input. Validates what must be, and says what it completes.
    fn complete(
        &mut self,
        header: FrameHeader,
        at: Where,
        here: &[u8],
    ) -> Result<Option<Done>, DecodeError> {
        let kept = !matches!(at, Where::Input(_));
        if header.opcode.is_control() {
            self.release_control |= kept;
            return Ok(Some(match header.opcode {
                OpCode::Ping => Done::Ping(at),
                OpCode::Pong => Done::Pong(at),
                _ => {
                    self.ended = true;
                    let payload = if kept { &self.kept_control[..] } else { here };
                    let code = parse_close(payload)?.map(|(code, _)| code);
                    Done::Close(code.map(|code| (code, at)))
                }
            }));
        }
        if !header.fin {
            return Ok(None);
        }
        let message = self
            .message
            .take()
            .ok_or(DecodeError::UnexpectedContinuation)?;
        self.release_kept |= kept;
        if message.compressed {
            return Ok(Some(Done::Compressed(message.text, at)));
        }
        if !message.text {
            return Ok(Some(Done::Binary(at)));
        }
        if !kept {
            self.utf8.feed(here).map_err(|_| DecodeError::InvalidUtf8)?;
        }
        self.utf8.finish().map_err(|_| DecodeError::InvalidUtf8)?;
        Ok(Some(Done::Text(at)))
    }
}

/// A completed event, before it borrows its payload.
enum Done {
    Text(Where),
    Binary(Where),
    /// Text or not, and where.
    Compressed(bool, Where),
    Ping(Where),
    Pong(Where),
    /// The code, and where the whole payload (code, then reason) is.
    Close(Option<(u16, Where)>),
}

/// Where a completed payload is.
#[derive(Debug, Clone)]
enum Where {
    /// In the caller's input, unmasked in place.
    Input(std::ops::Range<usize>),
    /// In [`Decoder::kept`].
    Kept,
    /// In [`Decoder::kept_control`].
    KeptControl,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        encode::client_frame,
        fuzzing::{decode_all, Owned},
    };

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const LIMITS: Limits = Limits {
        max_message: 1000,
        rsv1: false,
    };

    fn frame(opcode: OpCode, payload: &[u8], more: bool) -> Vec<u8> {
        client_frame(opcode, payload, more, MASK)
    }

    /// Decodes `stream` at once and in pieces of every size up to 16; all
    /// must agree. Returns the events.
    fn decode(limits: Limits, stream: &[u8]) -> Vec<Owned> {
        let at_once = decode_all(limits, stream, 0);
        for piece in 1..=16 {
            assert_eq!(
                decode_all(limits, stream, piece),
                at_once,
                "pieces of {piece}"
            );
        }
        at_once
    }

    #[test]
    fn an_idle_decoder_is_small_and_holds_nothing() {
        // Every connection has one (the server's memory per connection).
        assert!(std::mem::size_of::<Decoder>() <= 24);
        let mut decoder = Decoder::new(LIMITS);
        let mut split = frame(OpCode::Text, b"split", false);
        let (head, tail) = split.split_at_mut(4);
        decoder.decode(head).unwrap();
        assert!(
            decoder.in_progress() && decoder.held_bytes() > 0,
            "assembling"
        );
        assert_eq!(
            decoder.decode(tail).unwrap().event,
            Some(Event::Text("split"))
        );
        let mut ping = frame(OpCode::Ping, b"", false);
        decoder.decode(&mut ping).unwrap();
        assert_eq!(decoder.held_bytes(), 0, "the assembler is gone again");
    }

    #[test]
    fn whole_frames_come_out_as_slices_of_the_input() {
        let mut input = frame(OpCode::Text, b"hello", false);
        input.extend(frame(OpCode::Binary, &[1, 2, 3], false));
        let mut decoder = Decoder::new(LIMITS);
        let first = decoder.decode(&mut input).unwrap();
        assert_eq!(
            (first.consumed, first.event),
            (11, Some(Event::Text("hello")))
        );
        assert_eq!(decoder.held_bytes(), 0, "nothing kept");
        let second = decoder.decode(&mut input[11..]).unwrap();
        assert_eq!(second.event, Some(Event::Binary(&[1, 2, 3])));
        assert!(!decoder.in_progress());
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between() {
        let mut stream = frame(OpCode::Text, "κό".as_bytes(), true);
        stream.extend(frame(OpCode::Ping, b"p", false));
        stream.extend(frame(OpCode::Continuation, "σμε".as_bytes(), true));
        stream.extend(frame(OpCode::Pong, b"", false));
        stream.extend(frame(OpCode::Continuation, b"!", false));
        stream.extend(frame(OpCode::Binary, b"after", false));
        assert_eq!(
            decode(LIMITS, &stream),
            [
                Owned::Ping(b"p".to_vec()),
                Owned::Pong(Vec::new()),
                Owned::Text("κόσμε!".into()),
                Owned::Binary(b"after".to_vec()),
            ]
        );
    }

    /// Found by the fuzzer: a control frame split over reads, handed out
    /// from its own storage, must not free the message kept beside it.
    #[test]
    fn a_split_ping_inside_a_fragmented_message_keeps_the_message() {
        let mut decoder = Decoder::new(LIMITS);
        let mut first = frame(OpCode::Binary, b"abc", true);
        assert_eq!(decoder.decode(&mut first).unwrap().event, None);
        let ping = frame(OpCode::Ping, b"ping", false);
        let (mut head, mut tail) = (ping[..7].to_vec(), ping[7..].to_vec());
        assert_eq!(decoder.decode(&mut head).unwrap().event, None);
        assert_eq!(
            decoder.decode(&mut tail).unwrap().event,
            Some(Event::Ping(b"ping"))
        );
        let mut last = frame(OpCode::Continuation, b"def", false);
        assert_eq!(
            decoder.decode(&mut last).unwrap().event,
            Some(Event::Binary(b"abcdef"))
        );
    }

    #[test]
    fn storage_is_freed_once_a_kept_message_is_handed_out() {
        let mut decoder = Decoder::new(LIMITS);
        let mut first = frame(OpCode::Binary, &[7; 500], true);
        decoder.decode(&mut first).unwrap();
        assert!(decoder.in_progress() && decoder.held_bytes() >= 500);
        let mut last = frame(OpCode::Continuation, &[8; 10], false);
        let done = decoder.decode(&mut last).unwrap();
        assert!(matches!(done.event, Some(Event::Binary(b)) if b.len() == 510));
        let mut ping = frame(OpCode::Ping, b"", false);
        decoder.decode(&mut ping).unwrap();
        assert_eq!(decoder.held_bytes(), 0);
    }

    #[test]
    fn limits_are_checked_from_the_header_before_anything_is_kept() {
        let big = frame(OpCode::Binary, &[0; 1001], false);
        let mut decoder = Decoder::new(LIMITS);
        // The header alone is enough to refuse it.
        let mut head = big[..8].to_vec();
        assert_eq!(decoder.decode(&mut head), Err(DecodeError::TooLarge));
        assert_eq!(DecodeError::TooLarge.close_code(), 1009);
        let mut stream = frame(OpCode::Text, &[b'a'; 600], true);
        stream.extend(frame(OpCode::Continuation, &[b'a'; 401], false));
        assert_eq!(
            decode(LIMITS, &stream),
            [Owned::Error(DecodeError::TooLarge)]
        );
        let mut exact = frame(OpCode::Text, &[b'a'; 600], true);
        exact.extend(frame(OpCode::Continuation, &[b'a'; 400], false));
        assert_eq!(decode(LIMITS, &exact), [Owned::Text("a".repeat(1000))]);
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_it_arrives_in() {
        let mut stream = frame(OpCode::Text, b"fine", true);
        stream.extend(frame(OpCode::Continuation, &[0xce, 0xba, 0xff], true));
        // Never sent: the error comes before the message would end.
        let events = decode(LIMITS, &stream);
        assert_eq!(events, [Owned::Error(DecodeError::InvalidUtf8)]);
        assert_eq!(DecodeError::InvalidUtf8.close_code(), 1007);
        let split = [
            frame(OpCode::Text, &[0xe2, 0x82], true),
            frame(OpCode::Continuation, &[0xac], false),
        ]
        .concat();
        assert_eq!(decode(LIMITS, &split), [Owned::Text("€".into())]);
        let cut = [
            frame(OpCode::Text, &[0xe2, 0x82], true),
            frame(OpCode::Continuation, b"", false),
        ]
        .concat();
        assert_eq!(
            decode(LIMITS, &cut),
            [Owned::Error(DecodeError::InvalidUtf8)]
        );
    }

    #[test]
    fn protocol_violations_close_with_1002() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let mut rsv2 = frame(OpCode::Text, b"x", false);
        rsv2[0] |= 0x20;
        let mut rsv1 = frame(OpCode::Text, b"x", false);
        rsv1[0] |= 0x40;
        let long_ping = frame(OpCode::Ping, &[0; 126], false);
        let fragmented_ping = frame(OpCode::Ping, b"p", true);
        let lone_continuation = frame(OpCode::Continuation, b"x", false);
        let interrupted = [
            frame(OpCode::Text, b"a", true),
            frame(OpCode::Text, b"b", false),
        ]
        .concat();
        let reserved = vec![0x83, 0x80, 0, 0, 0, 0];
        let cases = [
            (unmasked, DecodeError::Unmasked),
            (rsv2, DecodeError::ReservedBits),
            (rsv1, DecodeError::ReservedBits),
            (long_ping, DecodeError::BadControlFrame),
            (fragmented_ping, DecodeError::BadControlFrame),
            (lone_continuation, DecodeError::UnexpectedContinuation),
            (interrupted, DecodeError::ExpectedContinuation),
            (
                reserved,
                DecodeError::Header(HeaderError::ReservedOpcode(3)),
            ),
        ];
        for (stream, error) in cases {
            assert_eq!(decode(LIMITS, &stream), [Owned::Error(error)], "{error}");
            assert_eq!(error.close_code(), 1002);
        }
    }

    #[test]
    fn rsv1_only_when_negotiated_and_only_on_a_first_frame() {
        let deflate = Limits {
            rsv1: true,
            ..LIMITS
        };
        let mut first = frame(OpCode::Text, b"\xff\x00", true);
        first[0] |= 0x40;
        let mut stream = first.clone();
        stream.extend(frame(OpCode::Continuation, b"\x01", false));
        assert_eq!(
            decode(deflate, &stream),
            [Owned::Compressed(true, vec![0xff, 0, 1])],
            "not validated as UTF-8: the caller inflates it first"
        );
        let mut continued = first;
        let mut second = frame(OpCode::Continuation, b"x", false);
        second[0] |= 0x40;
        continued.extend(second);
        assert_eq!(
            decode(deflate, &continued),
            [Owned::Error(DecodeError::ReservedBits)]
        );
        let mut ping = frame(OpCode::Ping, b"", false);
        ping[0] |= 0x40;
        assert_eq!(
            decode(deflate, &ping),
            [Owned::Error(DecodeError::ReservedBits)]
        );
    }

    #[test]
    fn close_frames_are_checked_and_end_the_stream() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ☺".as_bytes());
        let mut stream = frame(OpCode::Close, &payload, false);
        stream.extend(frame(OpCode::Text, b"ignored", false));
        assert_eq!(
            decode(LIMITS, &stream),
            [Owned::Close(Some((1000, "bye ☺".into())))]
        );
        assert_eq!(
            decode(LIMITS, &frame(OpCode::Close, b"", false)),
            [Owned::Close(None)]
        );
        let cases = [
            (vec![3], DecodeError::BadClose),
            (1005u16.to_be_bytes().to_vec(), DecodeError::BadClose),
            (
                [&1000u16.to_be_bytes()[..], &[0xff]].concat(),
                DecodeError::InvalidUtf8,
            ),
        ];
        for (payload, error) in cases {
            let stream = frame(OpCode::Close, &payload, false);
            assert_eq!(
                decode(LIMITS, &stream),
                [Owned::Error(error)],
                "{payload:?}"
            );
        }
    }

    #[test]
    fn the_fuzzers_property_holds_on_a_mixed_stream() {
        let mut stream = vec![0xff, 5];
        stream.extend(frame(OpCode::Text, b"one", true));
        stream.extend(frame(OpCode::Ping, b"x", false));
        stream.extend(frame(OpCode::Continuation, b" two", false));
        stream.extend(frame(OpCode::Binary, &[0; 300], false));
        stream.extend(frame(OpCode::Close, &[0x03, 0xe8], false));
        crate::fuzzing::frame_decode(&stream);
        crate::fuzzing::frame_decode(&[0, 0, 0x81]);
        crate::fuzzing::frame_decode(&[]);
    }
}
