//! What every connection of a shard shares for reading and compressing,
//! one of each per shard: the buffer reads land in, the compressor that
//! compresses each publication once for all connections that negotiated
//! permessage-deflate, and the inflater of their compressed messages.
//! Each is borrowed only within one poll or one call, never across an
//! await.

use std::cell::RefCell;

use crate::conn::deflate::{DeflateSettings, Deflater, Inflater};

/// One shard's shared buffers.
pub(crate) struct Scratch {
    /// Where every connection's reads land (`read-buffer-bytes`): sessions
    /// decode in place and keep only what the decoder must, so an idle
    /// connection holds no read buffer.
    pub(crate) read: RefCell<Box<[u8]>>,
    /// Compresses publications: once per publication, for all.
    pub(crate) deflater: RefCell<Deflater>,
    /// Inflates every connection's compressed messages, one whole message
    /// at a time.
    pub(crate) inflater: RefCell<Inflater>,
}

impl Scratch {
    pub(crate) fn new(read_buffer_bytes: usize, deflate: DeflateSettings) -> Self {
        Scratch {
            read: RefCell::new(vec![0; read_buffer_bytes].into_boxed_slice()),
            deflater: RefCell::new(Deflater::new(deflate)),
            inflater: RefCell::new(Inflater::default()),
        }
    }
}
