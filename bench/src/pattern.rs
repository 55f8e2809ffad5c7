//! The deterministic byte stream that the upstream sends in stream mode.
//!
//! Byte `i` of a session's stream is `i % 251`, so the load generator can check every
//! byte it receives however a proxy re-frames the stream, with a plain slice compare.

use bytes::Bytes;

/// Length of the repeating cycle; prime, so it never lines up with message sizes.
pub const PERIOD: usize = 251;

/// A buffer holding the pattern, long enough to slice any chunk up to `max_len` bytes
/// starting at any stream offset without copying.
#[derive(Clone)]
pub struct Pattern {
    buf: Bytes,
    max_len: usize,
}

impl Pattern {
    pub fn new(max_len: usize) -> Self {
        let max_len = max_len.max(1);
        let buf: Vec<u8> = (0..max_len + PERIOD).map(|i| (i % PERIOD) as u8).collect();
        Self {
            buf: Bytes::from(buf),
            max_len,
        }
    }

    /// The `len` bytes of the stream starting at `offset` (zero copy); `len` is capped
    /// at the `max_len` the pattern was built for.
    pub fn chunk(&self, offset: u64, len: usize) -> Bytes {
        let start = (offset % PERIOD as u64) as usize;
        self.buf.slice(start..start + len.min(self.max_len))
    }

    /// Whether `data` equals the stream's bytes starting at `offset`.
    pub fn matches(&self, offset: u64, data: &[u8]) -> bool {
        let mut offset = offset;
        for piece in data.chunks(self.max_len) {
            if piece != &self.chunk(offset, piece.len())[..] {
                return false;
            }
            offset += piece.len() as u64;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_continue_the_stream_and_mismatches_are_seen() {
        let p = Pattern::new(1000);
        let whole: Vec<u8> = (0..3000).map(|i| (i % PERIOD) as u8).collect();
        assert_eq!(&p.chunk(0, 1000)[..], &whole[..1000]);
        assert_eq!(&p.chunk(1000, 1000)[..], &whole[1000..2000]);
        assert!(p.matches(17, &whole[17..2900]));
        let mut bad = whole[5..900].to_vec();
        bad[400] ^= 1;
        assert!(!p.matches(5, &bad));
        assert!(!p.matches(6, &whole[5..900]));
    }
}
