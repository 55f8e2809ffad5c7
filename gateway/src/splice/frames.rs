//! Walking websocket frame headers in a relayed byte stream.
//!
//! After both handshakes no frame needs re-encoding: browser frames are
//! masked, and so must frames towards KubeVirt be (the gateway is its client);
//! KubeVirt's frames are unmasked, as frames towards the browser must be. So
//! the relay forwards bytes as they are and only looks at frame headers
//! (parsed by tungstenite's [`FrameHeader`]) to turn text into binary, enforce
//! the message size limit, count payload bytes, find close frames, and know
//! where a frame of its own (a ping) may be inserted.

use std::io::Cursor;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// The longest frame header (2 + 8 length + 4 mask bytes).
pub const MAX_HEADER: usize = 14;
/// Control frames carry at most 125 payload bytes (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Which peer a byte stream comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The browser: its frames are masked.
    Client,
    /// The VM side: its frames are unmasked.
    Upstream,
}

/// What a scan of one buffer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Only data and pass-through control frames.
    Nothing,
    /// A close frame starts where forwarding stops.
    Close,
    /// A data message grew over the size limit (its frame starts where
    /// forwarding stops).
    TooBig,
    /// Not a valid frame stream (wrong masking, reserved bits, bad header).
    Broken,
}

/// The result of scanning one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// What stopped the scan, if anything.
    pub found: Found,
    /// How many bytes from the start of the buffer may be forwarded. Bytes
    /// after them are a frame header still incomplete (`Found::Nothing`; the
    /// caller keeps them for the next read) or the frame that stopped the scan.
    pub forward: usize,
    /// Data payload bytes within the forwarded part.
    pub data: u64,
}

/// Frame-boundary state of one direction of a relay.
///
/// A frame header is only ever forwarded whole (the caller carries an
/// incomplete one over to the next read), so the forwarded stream is always
/// either between frames or inside a payload: if a session must end in the
/// middle of a frame, the frame can be finished with `payload_left` filler
/// bytes before a close frame goes out.
pub struct FrameScanner {
    from: Side,
    max_message: u64,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Whether the current frame is a data frame (counted) or a control frame.
    data_frame: bool,
    /// Payload bytes so far of the current (possibly fragmented) message.
    message_len: u64,
}

impl FrameScanner {
    /// A scanner for frames coming from `from`, allowing messages of up to
    /// `max_message` payload bytes.
    pub fn new(from: Side, max_message: u64) -> FrameScanner {
        FrameScanner {
            from,
            max_message,
            payload_left: 0,
            data_frame: false,
            message_len: 0,
        }
    }

    /// The side the scanned frames come from.
    pub fn side(&self) -> Side {
        self.from
    }

    /// Whether the forwarded stream is between two frames (where a ping or a
    /// close frame may go).
    pub fn at_boundary(&self) -> bool {
        self.payload_left == 0
    }

    /// Payload bytes the receiver still expects for the frame being forwarded.
    pub fn payload_left(&self) -> u64 {
        self.payload_left
    }

    /// Scans `buf`, rewriting text opcodes to binary in place.
    pub fn scan(&mut self, buf: &mut [u8]) -> Scan {
        let mut i = 0;
        let mut data = 0u64;
        let stop = |found, forward, data| Scan {
            found,
            forward,
            data,
        };
        while i < buf.len() {
            if self.payload_left > 0 {
                let take = self.payload_left.min((buf.len() - i) as u64);
                i += take as usize;
                self.payload_left -= take;
                if self.data_frame {
                    data += take;
                }
                continue;
            }
            let start = i;
            if OpCode::from(buf[i] & 0x0f) == OpCode::Data(Data::Text) {
                buf[i] = (buf[i] & 0xf0) | u8::from(OpCode::Data(Data::Binary));
            }
            let mut cursor = Cursor::new(&buf[start..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    if header.opcode == OpCode::Control(Control::Close) {
                        return stop(Found::Close, start, data);
                    }
                    if let Some(found) = self.start_frame(&header, len) {
                        return stop(found, start, data);
                    }
                    i += cursor.position() as usize;
                }
                // The header continues in the next read.
                Ok(None) => return stop(Found::Nothing, start, data),
                Err(_) => return stop(Found::Broken, start, data),
            }
        }
        stop(Found::Nothing, buf.len(), data)
    }

    /// Checks a frame header; on success the frame's payload is expected next.
    fn start_frame(&mut self, header: &FrameHeader, len: u64) -> Option<Found> {
        let masked_as_expected = header.mask.is_some() == (self.from == Side::Client);
        // No extension was negotiated, so reserved bits must be clear.
        if !masked_as_expected || header.rsv1 || header.rsv2 || header.rsv3 {
            return Some(Found::Broken);
        }
        match header.opcode {
            OpCode::Control(_) => {
                if len > MAX_CONTROL_PAYLOAD {
                    return Some(Found::Broken);
                }
                self.data_frame = false;
            }
            OpCode::Data(kind) => {
                let message_len = if kind == Data::Continue {
                    self.message_len.saturating_add(len)
                } else {
                    len
                };
                if message_len > self.max_message {
                    return Some(Found::TooBig);
                }
                self.message_len = message_len;
                self.data_frame = true;
            }
        }
        self.payload_left = len;
        None
    }
}

/// An empty ping frame as `writer` would send it (masked when the gateway
/// writes towards the VM side, as its client).
pub fn ping_frame(towards: Side) -> Vec<u8> {
    let mut frame = Frame::ping(Bytes::new());
    if towards == Side::Upstream {
        frame.header_mut().mask = Some(rand::random());
    }
    let mut out = Vec::with_capacity(6);
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: OpCode, payload: &[u8], masked: bool, fin: bool) -> Vec<u8> {
        let mut f = Frame::message(Bytes::copy_from_slice(payload), opcode, fin);
        if masked {
            f.header_mut().mask = Some([1, 2, 3, 4]);
        }
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    /// Feeds `bytes` to a scanner in reads of `chunk` bytes, carrying
    /// incomplete headers over like the pump does; returns the forwarded
    /// bytes, the data count and the first non-`Nothing` result.
    fn relay(s: &mut FrameScanner, bytes: &[u8], chunk: usize) -> (Vec<u8>, u64, Option<Scan>) {
        let mut out = Vec::new();
        let mut carry = Vec::new();
        let mut total = 0;
        for piece in bytes.chunks(chunk) {
            let mut buf = std::mem::take(&mut carry);
            buf.extend_from_slice(piece);
            let scan = s.scan(&mut buf);
            total += scan.data;
            out.extend_from_slice(&buf[..scan.forward]);
            if scan.found != Found::Nothing {
                return (out, total, Some(scan));
            }
            assert!(
                buf.len() - scan.forward < MAX_HEADER,
                "only a header is carried"
            );
            carry = buf[scan.forward..].to_vec();
        }
        assert!(carry.is_empty(), "bytes left over: {carry:?}");
        (out, total, None)
    }

    #[test]
    fn text_becomes_binary_and_payload_is_counted_across_reads() {
        let mut bytes = frame(OpCode::Data(Data::Text), b"hello world", true, true);
        bytes.extend(frame(OpCode::Data(Data::Binary), &[9; 300], true, true));
        // One byte at a time: headers and payloads span reads.
        for chunk in [1, 3, 7, 1000] {
            let mut s = FrameScanner::new(Side::Client, 1 << 20);
            let (out, total, stopped) = relay(&mut s, &bytes, chunk);
            assert_eq!(stopped, None);
            assert_eq!(total, 311);
            assert!(s.at_boundary());
            assert_eq!(out[0] & 0x0f, 0x2, "text opcode rewritten to binary");
            assert_eq!(&out[1..], &bytes[1..], "nothing else changed");
        }
    }

    #[test]
    fn headers_are_forwarded_whole_so_a_frame_can_be_finished() {
        let bytes = frame(OpCode::Data(Data::Binary), &[5; 1000], false, true);
        let mut s = FrameScanner::new(Side::Upstream, 1 << 20);
        // The 4-byte header arrives in two reads: nothing goes out until it is whole.
        let mut first = bytes[..3].to_vec();
        let scan = s.scan(&mut first);
        assert_eq!(
            (scan.found, scan.forward, scan.data),
            (Found::Nothing, 0, 0)
        );
        assert!(s.at_boundary());
        let mut second = bytes[..500].to_vec();
        let scan = s.scan(&mut second);
        assert_eq!(
            (scan.found, scan.forward, scan.data),
            (Found::Nothing, 500, 496)
        );
        // 504 payload bytes would finish the frame.
        assert_eq!(s.payload_left(), 504);
        assert!(!s.at_boundary());
    }

    #[test]
    fn finds_close_frames_and_limits_messages() {
        let mut bytes = frame(OpCode::Data(Data::Binary), b"abc", false, true);
        let at = bytes.len();
        let mut close = Vec::new();
        Frame::close(None).format(&mut close).unwrap();
        bytes.extend(close);
        let mut s = FrameScanner::new(Side::Upstream, 1 << 20);
        let scan = s.scan(&mut bytes);
        assert_eq!((scan.found, scan.forward, scan.data), (Found::Close, at, 3));
        assert!(s.at_boundary());

        // A fragmented message over the limit is caught at the fragment that
        // crosses it; what came before it is still forwarded.
        let mut s = FrameScanner::new(Side::Upstream, 100);
        let mut bytes = frame(OpCode::Data(Data::Binary), &[0; 60], false, false);
        let first_len = bytes.len();
        bytes.extend(frame(OpCode::Data(Data::Continue), &[0; 60], false, true));
        let (out, total, stopped) = relay(&mut s, &bytes, 7);
        assert_eq!(stopped.map(|s| s.found), Some(Found::TooBig));
        assert_eq!((out.len(), total), (first_len, 60));
        assert!(s.at_boundary(), "the refused frame is not started");
    }

    #[test]
    fn refuses_wrong_masking() {
        let mut unmasked = frame(OpCode::Data(Data::Binary), b"x", false, true);
        assert_eq!(
            FrameScanner::new(Side::Client, 100)
                .scan(&mut unmasked)
                .found,
            Found::Broken
        );
        let mut masked = frame(OpCode::Data(Data::Binary), b"x", true, true);
        assert_eq!(
            FrameScanner::new(Side::Upstream, 100)
                .scan(&mut masked)
                .found,
            Found::Broken
        );
    }

    #[test]
    fn ping_frames_are_masked_only_towards_the_vm() {
        assert_eq!(ping_frame(Side::Client), vec![0x89, 0x00]);
        let towards_vm = ping_frame(Side::Upstream);
        assert_eq!(towards_vm.len(), 6);
        assert_eq!(&towards_vm[..2], &[0x89, 0x80]);
    }
}
