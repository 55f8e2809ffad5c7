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
const MAX_HEADER: usize = 14;
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
    /// Only data and pass-through control frames: forward it all.
    Nothing,
    /// A close frame starts at this offset: forward what comes before it.
    Close(usize),
    /// A data message grew over the size limit.
    TooBig,
    /// Not a valid frame stream (wrong masking, reserved bits, bad header).
    Broken,
}

/// Frame-boundary state of one direction of a relay.
pub struct FrameScanner {
    from: Side,
    max_message: u64,
    /// Header bytes of a header that spans two reads.
    header: [u8; MAX_HEADER],
    header_len: usize,
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
            header: [0; MAX_HEADER],
            header_len: 0,
            payload_left: 0,
            data_frame: false,
            message_len: 0,
        }
    }

    /// Whether the stream is between two frames (where a ping may go).
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Scans `buf`, rewriting text opcodes to binary in place. Returns what it
    /// found and how many data payload bytes it passed over.
    pub fn scan(&mut self, buf: &mut [u8]) -> (Found, u64) {
        let mut i = 0;
        let mut data = 0u64;
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
            if self.header_len == 0 {
                // The opcode is in the first byte, which may be forwarded
                // before the rest of the header arrives: decide on it now.
                match OpCode::from(buf[i] & 0x0f) {
                    OpCode::Control(Control::Close) => return (Found::Close(i), data),
                    OpCode::Data(Data::Text) => {
                        buf[i] = (buf[i] & 0xf0) | u8::from(OpCode::Data(Data::Binary));
                    }
                    _ => {}
                }
            }
            let take = (MAX_HEADER - self.header_len).min(buf.len() - i);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&buf[i..i + take]);
            let mut cursor = Cursor::new(&self.header[..self.header_len + take]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    let used = cursor.position() as usize - self.header_len;
                    i += used;
                    self.header_len = 0;
                    if let Some(found) = self.start_frame(&header, len) {
                        return (found, data);
                    }
                }
                // The header continues in the next read.
                Ok(None) => {
                    self.header_len += take;
                    i += take;
                }
                Err(_) => return (Found::Broken, data),
            }
        }
        (Found::Nothing, data)
    }

    fn start_frame(&mut self, header: &FrameHeader, len: u64) -> Option<Found> {
        let masked_as_expected = header.mask.is_some() == (self.from == Side::Client);
        // No extension was negotiated, so reserved bits must be clear.
        if !masked_as_expected || header.rsv1 || header.rsv2 || header.rsv3 {
            return Some(Found::Broken);
        }
        self.payload_left = len;
        match header.opcode {
            OpCode::Control(_) => {
                self.data_frame = false;
                (len > MAX_CONTROL_PAYLOAD).then_some(Found::Broken)
            }
            OpCode::Data(kind) => {
                self.data_frame = true;
                if kind != Data::Continue {
                    self.message_len = 0;
                }
                self.message_len = self.message_len.saturating_add(len);
                (self.message_len > self.max_message).then_some(Found::TooBig)
            }
        }
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

    #[test]
    fn text_becomes_binary_and_payload_is_counted_across_reads() {
        let mut bytes = frame(OpCode::Data(Data::Text), b"hello world", true, true);
        bytes.extend(frame(OpCode::Data(Data::Binary), &[9; 300], true, true));
        let mut s = FrameScanner::new(Side::Client, 1 << 20);
        let mut total = 0;
        // Feed one byte at a time: headers and payloads span reads.
        let mut out = Vec::new();
        for b in &bytes {
            let mut one = [*b];
            let (found, data) = s.scan(&mut one);
            assert_eq!(found, Found::Nothing);
            total += data;
            out.push(one[0]);
        }
        assert_eq!(total, 311);
        assert!(s.at_boundary());
        assert_eq!(out[0] & 0x0f, 0x2, "text opcode rewritten to binary");
        assert_eq!(&out[1..], &bytes[1..], "nothing else changed");
    }

    #[test]
    fn finds_close_frames_and_limits_messages() {
        let mut bytes = frame(OpCode::Data(Data::Binary), b"abc", false, true);
        let at = bytes.len();
        let mut close = Vec::new();
        Frame::close(None).format(&mut close).unwrap();
        bytes.extend(close);
        let mut s = FrameScanner::new(Side::Upstream, 1 << 20);
        assert_eq!(s.scan(&mut bytes), (Found::Close(at), 3));

        // A fragmented message over the limit is caught at the fragment that crosses it.
        let mut s = FrameScanner::new(Side::Upstream, 100);
        let mut first = frame(OpCode::Data(Data::Binary), &[0; 60], false, false);
        let mut second = frame(OpCode::Data(Data::Continue), &[0; 60], false, true);
        assert_eq!(s.scan(&mut first), (Found::Nothing, 60));
        assert_eq!(s.scan(&mut second).0, Found::TooBig);
    }

    #[test]
    fn refuses_wrong_masking() {
        let mut unmasked = frame(OpCode::Data(Data::Binary), b"x", false, true);
        assert_eq!(
            FrameScanner::new(Side::Client, 100).scan(&mut unmasked).0,
            Found::Broken
        );
        let mut masked = frame(OpCode::Data(Data::Binary), b"x", true, true);
        assert_eq!(
            FrameScanner::new(Side::Upstream, 100).scan(&mut masked).0,
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
