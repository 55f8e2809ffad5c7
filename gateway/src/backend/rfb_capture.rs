//! One frame of an RFB (VNC) screen, for screenshots on the static backend.
//!
//! Just enough of the client side of RFB (RFC 6143) to read the screen
//! once: ProtocolVersion (3.3, 3.7 or 3.8, whichever the server offers up
//! to 3.8), security type None only, ClientInit with the shared flag set, so
//! the viewers already connected stay connected, SetPixelFormat to 32-bit
//! true colour, SetEncodings with Raw only, one non-incremental
//! FramebufferUpdateRequest for the whole screen, then Raw rectangles until
//! the screen is covered. Bell, ServerCutText and SetColourMapEntries are
//! read and ignored. A server that asks for a VNC password is refused with
//! [`CaptureError::NeedsPassword`]: the gateway holds no VNC passwords.
//!
//! [`Capture`] is a state machine over bytes (no I/O), so any split of the
//! server's stream gives the same result and bad input is an error, never a
//! panic; [`capture`] drives it over a socket and [`encode_png`] turns the
//! frame into a PNG. The framebuffer is bounded before it is allocated.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Security type "None" (RFC 6143 7.2.1).
const SECURITY_NONE: u8 = 1;
/// Security type "VNC Authentication" (RFC 6143 7.2.2).
const SECURITY_VNC_AUTH: u8 = 2;
/// Longest reason or desktop name read from a server.
const MAX_TEXT: usize = 64 * 1024;
/// Raw encoding (RFC 6143 7.7.1).
const ENCODING_RAW: i32 = 0;

/// Why a capture failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    #[error("not an RFB server: {0}")]
    NotRfb(String),
    #[error(
        "the screen asks for a VNC password (security type 2); screenshots need a screen with security type None"
    )]
    NeedsPassword,
    #[error("the screen offers no security type the gateway speaks (offered: {0:?}; needs None)")]
    NoUsableSecurity(Vec<u8>),
    #[error("the RFB server refused the connection: {0}")]
    Refused(String),
    #[error(
        "the screen is {width}x{height}: {bytes} framebuffer bytes exceed the limit of {limit}"
    )]
    TooLarge {
        width: u16,
        height: u16,
        bytes: usize,
        limit: usize,
    },
    #[error("RFB protocol error: {0}")]
    Protocol(String),
    #[error("the RFB server closed the connection before the screen was read")]
    Closed,
}

/// A screen's pixels, RGB, 3 bytes per pixel, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub rgb: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Minor {
    V3,
    V7,
    V8,
}

#[derive(Debug)]
enum State {
    Version,
    /// 3.7/3.8: the list of security types.
    SecurityTypes,
    /// 3.3: the one security type the server chose.
    SecurityType33,
    /// 3.8 after None: the SecurityResult.
    SecurityResult,
    /// A failure reason string (u32 length, then text).
    Reason,
    ServerInit,
    /// Between server messages.
    Message,
    /// A FramebufferUpdate with this many rectangles still to come.
    Rectangles(u16),
    /// Raw pixels of a rectangle, row by row.
    RawRows {
        x: usize,
        y: usize,
        w: usize,
        rows_left: usize,
        rects_left: u16,
    },
    /// Bytes to skip (a clipboard's text), then back to `Message`.
    Skip(u64),
    Done,
}

/// The client side of one RFB capture, fed with the server's bytes.
#[derive(Debug)]
pub struct Capture {
    state: State,
    minor: Minor,
    input: BytesMut,
    max_framebuffer_bytes: usize,
    width: u16,
    height: u16,
    rgb: Vec<u8>,
    /// Pixels written by the rectangles of the updates so far.
    covered: u64,
}

impl Capture {
    /// A capture refusing screens whose 32-bit framebuffer (width × height × 4)
    /// is larger than `max_framebuffer_bytes`.
    pub fn new(max_framebuffer_bytes: usize) -> Capture {
        Capture {
            state: State::Version,
            minor: Minor::V8,
            input: BytesMut::new(),
            max_framebuffer_bytes,
            width: 0,
            height: 0,
            rgb: Vec::new(),
            covered: 0,
        }
    }

    /// Takes bytes from the server; appends what to send back to `out`.
    /// Returns the frame once the whole screen has been read.
    ///
    /// # Errors
    /// Anything but a well-formed capture: see [`CaptureError`]. After an
    /// error the capture is over.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Option<Frame>, CaptureError> {
        self.input.extend_from_slice(data);
        while self.step(out)? {}
        if matches!(self.state, State::Done) {
            return Ok(Some(Frame {
                width: self.width,
                height: self.height,
                rgb: std::mem::take(&mut self.rgb),
            }));
        }
        Ok(None)
    }

    /// One step of the protocol; `false` when more input is needed.
    fn step(&mut self, out: &mut Vec<u8>) -> Result<bool, CaptureError> {
        let input = &mut self.input;
        match self.state {
            State::Version => {
                let Some(line) = take(input, 12) else {
                    return Ok(false);
                };
                self.minor = parse_version(&line)?;
                out.extend_from_slice(match self.minor {
                    Minor::V3 => b"RFB 003.003\n",
                    Minor::V7 => b"RFB 003.007\n",
                    Minor::V8 => b"RFB 003.008\n",
                });
                self.state = match self.minor {
                    Minor::V3 => State::SecurityType33,
                    _ => State::SecurityTypes,
                };
            }
            State::SecurityTypes => {
                let Some(&count) = input.first() else {
                    return Ok(false);
                };
                if count == 0 {
                    input.advance(1);
                    self.state = State::Reason;
                    return Ok(true);
                }
                let Some(list) = take(input, 1 + count as usize) else {
                    return Ok(false);
                };
                let types = list[1..].to_vec();
                if !types.contains(&SECURITY_NONE) {
                    return Err(if types.contains(&SECURITY_VNC_AUTH) {
                        CaptureError::NeedsPassword
                    } else {
                        CaptureError::NoUsableSecurity(types)
                    });
                }
                out.push(SECURITY_NONE);
                if self.minor == Minor::V8 {
                    self.state = State::SecurityResult;
                } else {
                    // 3.7 sends no SecurityResult after None (RFC 6143 appendix A).
                    self.client_init(out);
                }
            }
            State::SecurityType33 => {
                let Some(kind) = take_u32(input) else {
                    return Ok(false);
                };
                match kind {
                    0 => self.state = State::Reason,
                    1 => self.client_init(out),
                    2 => return Err(CaptureError::NeedsPassword),
                    other => {
                        return Err(CaptureError::Protocol(format!(
                            "RFB 3.3 server chose unknown security type {other}"
                        )));
                    }
                }
            }
            State::SecurityResult => {
                let Some(result) = take_u32(input) else {
                    return Ok(false);
                };
                match result {
                    0 => self.client_init(out),
                    _ => self.state = State::Reason,
                }
            }
            State::Reason => {
                let Some(text) = take_text(input)? else {
                    return Ok(false);
                };
                return Err(CaptureError::Refused(text));
            }
            State::ServerInit => {
                if input.len() < 24 {
                    return Ok(false);
                }
                let name_len = u32::from_be_bytes([input[20], input[21], input[22], input[23]]);
                let name_len = text_len(name_len)?;
                let Some(init) = take(input, 24 + name_len) else {
                    return Ok(false);
                };
                let width = u16::from_be_bytes([init[0], init[1]]);
                let height = u16::from_be_bytes([init[2], init[3]]);
                let bytes = usize::from(width) * usize::from(height) * 4;
                if bytes > self.max_framebuffer_bytes {
                    return Err(CaptureError::TooLarge {
                        width,
                        height,
                        bytes,
                        limit: self.max_framebuffer_bytes,
                    });
                }
                if width == 0 || height == 0 {
                    return Err(CaptureError::Protocol(format!(
                        "the screen is {width}x{height}"
                    )));
                }
                self.width = width;
                self.height = height;
                self.rgb = vec![0; usize::from(width) * usize::from(height) * 3];
                out.extend_from_slice(&set_pixel_format());
                out.extend_from_slice(&set_encodings_raw());
                out.extend_from_slice(&self.full_update_request());
                self.state = State::Message;
            }
            State::Message => {
                let Some(&kind) = input.first() else {
                    return Ok(false);
                };
                match kind {
                    // FramebufferUpdate: type, padding, number of rectangles.
                    0 => {
                        let Some(head) = take(input, 4) else {
                            return Ok(false);
                        };
                        self.state = State::Rectangles(u16::from_be_bytes([head[2], head[3]]));
                    }
                    // SetColourMapEntries: type, padding, first colour, count, 6 bytes each.
                    1 => {
                        if input.len() < 6 {
                            return Ok(false);
                        }
                        let count = u16::from_be_bytes([input[4], input[5]]);
                        if take(input, 6 + 6 * usize::from(count)).is_none() {
                            return Ok(false);
                        }
                    }
                    // Bell.
                    2 => input.advance(1),
                    // ServerCutText: type, 3 padding, length, text (skipped, not kept).
                    3 => {
                        let Some(head) = take(input, 8) else {
                            return Ok(false);
                        };
                        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                        self.state = State::Skip(u64::from(len));
                    }
                    other => {
                        return Err(CaptureError::Protocol(format!(
                            "unknown server message type {other}"
                        )));
                    }
                }
            }
            State::Skip(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                input.advance(n);
                let left = left - n as u64;
                if left > 0 {
                    self.state = State::Skip(left);
                    return Ok(false);
                }
                self.state = State::Message;
            }
            State::Rectangles(0) => self.update_done(out),
            State::Rectangles(rects_left) => {
                let Some(head) = take(input, 12) else {
                    return Ok(false);
                };
                let field = |i: usize| usize::from(u16::from_be_bytes([head[i], head[i + 1]]));
                let (x, y, w, h) = (field(0), field(2), field(4), field(6));
                let encoding = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
                if encoding != ENCODING_RAW {
                    return Err(CaptureError::Protocol(format!(
                        "rectangle in encoding {encoding}, not the Raw encoding asked for"
                    )));
                }
                if x + w > usize::from(self.width) || y + h > usize::from(self.height) {
                    return Err(CaptureError::Protocol(format!(
                        "rectangle {w}x{h}+{x}+{y} outside the {}x{} screen",
                        self.width, self.height
                    )));
                }
                self.covered += (w * h) as u64;
                self.state = if w == 0 || h == 0 {
                    State::Rectangles(rects_left - 1)
                } else {
                    State::RawRows {
                        x,
                        y,
                        w,
                        rows_left: h,
                        rects_left: rects_left - 1,
                    }
                };
            }
            State::RawRows {
                x,
                y,
                w,
                rows_left,
                rects_left,
            } => {
                let Some(row) = take(input, w * 4) else {
                    return Ok(false);
                };
                // 32 bits little-endian, red at bit 16: B, G, R, unused.
                let start = (y * usize::from(self.width) + x) * 3;
                for (pixel, rgb) in row
                    .chunks_exact(4)
                    .zip(self.rgb[start..start + w * 3].chunks_exact_mut(3))
                {
                    rgb.copy_from_slice(&[pixel[2], pixel[1], pixel[0]]);
                }
                self.state = if rows_left > 1 {
                    State::RawRows {
                        x,
                        y: y + 1,
                        w,
                        rows_left: rows_left - 1,
                        rects_left,
                    }
                } else {
                    State::Rectangles(rects_left)
                };
            }
            State::Done => return Ok(false),
        }
        Ok(true)
    }

    fn client_init(&mut self, out: &mut Vec<u8>) {
        // Shared: the viewers already connected stay connected.
        out.push(1);
        self.state = State::ServerInit;
    }

    fn full_update_request(&self) -> [u8; 10] {
        let [w0, w1] = self.width.to_be_bytes();
        let [h0, h1] = self.height.to_be_bytes();
        [3, 0, 0, 0, 0, 0, w0, w1, h0, h1]
    }

    /// A FramebufferUpdate ended: done once every pixel was sent, else ask again.
    fn update_done(&mut self, out: &mut Vec<u8>) {
        if self.covered >= u64::from(self.width) * u64::from(self.height) {
            self.state = State::Done;
        } else {
            out.extend_from_slice(&self.full_update_request());
            self.state = State::Message;
        }
    }
}

/// SetPixelFormat: 32 bits per pixel, depth 24, little-endian, true colour,
/// 8 bits per channel, red at bit 16, green at 8, blue at 0.
fn set_pixel_format() -> [u8; 20] {
    [
        0, 0, 0, 0, // type, padding
        32, 24, 0, 1, // bits per pixel, depth, big-endian, true colour
        0, 255, 0, 255, 0, 255, // red, green, blue maximum
        16, 8, 0, // red, green, blue shift
        0, 0, 0, // padding
    ]
}

/// SetEncodings: Raw only.
fn set_encodings_raw() -> [u8; 8] {
    [2, 0, 0, 1, 0, 0, 0, 0]
}

fn parse_version(line: &[u8]) -> Result<Minor, CaptureError> {
    let shown = || String::from_utf8_lossy(line).escape_debug().to_string();
    let digits = |s: &[u8]| {
        s.iter()
            .all(u8::is_ascii_digit)
            .then(|| s.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
    };
    if &line[..4] != b"RFB " || line[7] != b'.' || line[11] != b'\n' {
        return Err(CaptureError::NotRfb(format!("greeting {:?}", shown())));
    }
    match (digits(&line[4..7]), digits(&line[8..11])) {
        (Some(3), Some(minor)) if minor >= 8 => Ok(Minor::V8),
        (Some(3), Some(7)) => Ok(Minor::V7),
        // 3.3, and the 3.4/3.6 of some old servers, which speak 3.3.
        (Some(3), Some(_)) => Ok(Minor::V3),
        _ => Err(CaptureError::NotRfb(format!(
            "unsupported version {:?}",
            shown()
        ))),
    }
}

/// The first `n` bytes, if they have all arrived.
fn take(input: &mut BytesMut, n: usize) -> Option<BytesMut> {
    (input.len() >= n).then(|| input.split_to(n))
}

fn take_u32(input: &mut BytesMut) -> Option<u32> {
    take(input, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn text_len(len: u32) -> Result<usize, CaptureError> {
    usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_TEXT)
        .ok_or_else(|| CaptureError::Protocol(format!("a {len}-byte string")))
}

/// A u32-length-prefixed string, if it has all arrived.
fn take_text(input: &mut BytesMut) -> Result<Option<String>, CaptureError> {
    if input.len() < 4 {
        return Ok(None);
    }
    let len = text_len(u32::from_be_bytes([input[0], input[1], input[2], input[3]]))?;
    Ok(take(input, 4 + len).map(|b| String::from_utf8_lossy(&b[4..]).into_owned()))
}

/// Reads one frame from an RFB server over `stream` (bound it with a timeout).
///
/// # Errors
/// I/O errors as [`CaptureError::Closed`] or their text; protocol errors as
/// [`Capture::feed`] says.
pub async fn capture<S>(stream: &mut S, max_framebuffer_bytes: usize) -> Result<Frame, CaptureError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| CaptureError::Protocol(format!("connection failed: {e}"));
    let mut rfb = Capture::new(max_framebuffer_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err(CaptureError::Closed);
        }
        let frame = rfb.feed(&buf[..n], &mut out)?;
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(io)?;
            out.clear();
        }
        if let Some(frame) = frame {
            return Ok(frame);
        }
    }
}

/// The frame as an 8-bit RGB PNG.
///
/// # Errors
/// When the `png` encoder fails (a frame whose size does not match its pixels).
pub fn encode_png(frame: &Frame) -> Result<Vec<u8>, png::EncodingError> {
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, u32::from(frame.width), u32::from(frame.height));
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Screens are mostly flat colour: fast compression is small enough.
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&frame.rgb)?;
    writer.finish()?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    /// A whole 3.8 conversation from the server: a `w`x`h` screen in one
    /// colour sent as one Raw rectangle, with a Bell, a clipboard and a
    /// colour map in front of it.
    fn server_38(w: u16, h: u16, bgrx: [u8; 4]) -> Vec<u8> {
        let mut s = b"RFB 003.008\n".to_vec();
        s.extend_from_slice(&[2, 2, 1]); // VNC auth and None offered
        s.extend_from_slice(&0u32.to_be_bytes()); // SecurityResult OK
        s.extend_from_slice(&server_init(w, h, b"desk"));
        s.extend_from_slice(&messages_then_update(w, h, bgrx));
        s
    }

    fn server_init(w: u16, h: u16, name: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&w.to_be_bytes());
        s.extend_from_slice(&h.to_be_bytes());
        s.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        s.extend_from_slice(&(name.len() as u32).to_be_bytes());
        s.extend_from_slice(name);
        s
    }

    fn messages_then_update(w: u16, h: u16, bgrx: [u8; 4]) -> Vec<u8> {
        let mut s = vec![2]; // Bell
        s.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 5]);
        s.extend_from_slice(b"hello"); // ServerCutText
        s.extend_from_slice(&[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // one colour map entry
        s.extend_from_slice(&[0, 0, 0, 1]); // FramebufferUpdate, one rectangle
        s.extend_from_slice(&[0, 0, 0, 0]);
        s.extend_from_slice(&w.to_be_bytes());
        s.extend_from_slice(&h.to_be_bytes());
        s.extend_from_slice(&0i32.to_be_bytes());
        for _ in 0..u32::from(w) * u32::from(h) {
            s.extend_from_slice(&bgrx);
        }
        s
    }

    /// Feeds `server` in pieces of `chunk` bytes; returns the result and what the client sent.
    fn run(server: &[u8], chunk: usize) -> (Result<Option<Frame>, CaptureError>, Vec<u8>) {
        let mut c = Capture::new(LIMIT);
        let mut out = Vec::new();
        for piece in server.chunks(chunk.max(1)) {
            match c.feed(piece, &mut out) {
                Ok(None) => {}
                other => return (other, out),
            }
        }
        (Ok(None), out)
    }

    #[test]
    fn a_38_screen_in_any_split_gives_the_same_frame_and_client_bytes() {
        let server = server_38(3, 2, [0x99, 0x66, 0x33, 0]);
        let (whole, sent) = run(&server, server.len());
        let frame = whole.unwrap().unwrap();
        assert_eq!((frame.width, frame.height), (3, 2));
        assert_eq!(frame.rgb, [0x33, 0x66, 0x99].repeat(6));
        let mut expected = b"RFB 003.008\n".to_vec();
        expected.push(1); // security None
        expected.push(1); // ClientInit, shared
        expected.extend_from_slice(&set_pixel_format());
        expected.extend_from_slice(&set_encodings_raw());
        expected.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 3, 0, 2]);
        assert_eq!(sent, expected);
        for chunk in [1, 2, 3, 5, 7, 13, 31] {
            let (r, s) = run(&server, chunk);
            assert_eq!(r.unwrap().unwrap(), frame, "chunk {chunk}");
            assert_eq!(s, expected, "chunk {chunk}");
        }
    }

    #[test]
    fn rfb_33_and_37_handshakes() {
        // 3.3: the server picks the type (u32), no SecurityResult after None.
        let mut s = b"RFB 003.003\n".to_vec();
        s.extend_from_slice(&1u32.to_be_bytes());
        s.extend_from_slice(&server_init(1, 1, b""));
        s.extend_from_slice(&messages_then_update(1, 1, [1, 2, 3, 0]));
        let (r, sent) = run(&s, 1);
        assert_eq!(r.unwrap().unwrap().rgb, vec![3, 2, 1]);
        assert!(sent.starts_with(b"RFB 003.003\n\x01"));
        // 3.7: a list, then no SecurityResult after None.
        let mut s = b"RFB 003.007\n".to_vec();
        s.extend_from_slice(&[1, 1]);
        s.extend_from_slice(&server_init(1, 1, b"x"));
        s.extend_from_slice(&messages_then_update(1, 1, [1, 2, 3, 0]));
        let (r, sent) = run(&s, 3);
        assert_eq!(r.unwrap().unwrap().rgb, vec![3, 2, 1]);
        assert!(sent.starts_with(b"RFB 003.007\n\x01\x01"));
        // Apple's 3.889 is 3.8.
        let mut s = server_38(1, 1, [0; 4]);
        s[4..11].copy_from_slice(b"003.889");
        assert!(run(&s, 4).0.unwrap().is_some());
    }

    #[test]
    fn a_vnc_password_is_refused_in_every_version() {
        let mut s = b"RFB 003.008\n".to_vec();
        s.extend_from_slice(&[1, 2]);
        assert_eq!(run(&s, 1).0, Err(CaptureError::NeedsPassword));
        let mut s = b"RFB 003.003\n".to_vec();
        s.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(run(&s, 2).0, Err(CaptureError::NeedsPassword));
        let mut s = b"RFB 003.008\n".to_vec();
        s.extend_from_slice(&[2, 18, 19]);
        assert_eq!(
            run(&s, 5).0,
            Err(CaptureError::NoUsableSecurity(vec![18, 19]))
        );
    }

    #[test]
    fn server_refusals_carry_their_reason() {
        let reason = |prefix: &[u8]| {
            let mut s = prefix.to_vec();
            s.extend_from_slice(&9u32.to_be_bytes());
            s.extend_from_slice(b"too many!");
            run(&s, 2).0
        };
        let refused = Err(CaptureError::Refused("too many!".into()));
        assert_eq!(reason(b"RFB 003.008\n\x00"), refused);
        assert_eq!(reason(b"RFB 003.003\n\x00\x00\x00\x00"), refused);
        assert_eq!(reason(b"RFB 003.008\n\x01\x01\x00\x00\x00\x01"), refused);
    }

    #[test]
    fn an_oversized_screen_is_refused_before_allocating() {
        let mut s = b"RFB 003.008\n\x01\x01\x00\x00\x00\x00".to_vec();
        s.extend_from_slice(&server_init(65535, 65535, b""));
        assert!(matches!(
            run(&s, 64).0,
            Err(CaptureError::TooLarge {
                width: 65535,
                height: 65535,
                ..
            })
        ));
    }

    #[test]
    fn rectangles_outside_the_screen_or_in_other_encodings_are_errors() {
        let prefix = |rect: &[u8]| {
            let mut s = b"RFB 003.008\n\x01\x01\x00\x00\x00\x00".to_vec();
            s.extend_from_slice(&server_init(4, 4, b""));
            s.extend_from_slice(&[0, 0, 0, 1]);
            s.extend_from_slice(rect);
            s.extend_from_slice(&[0; 64]);
            run(&s, 3).0
        };
        assert!(matches!(
            prefix(&[0, 3, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0]),
            Err(CaptureError::Protocol(_))
        ));
        assert!(matches!(
            prefix(&[0xff, 0xff, 0xff, 0xff, 0, 2, 0, 2, 0, 0, 0, 0]),
            Err(CaptureError::Protocol(_))
        ));
        assert!(matches!(
            prefix(&[0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 16]),
            Err(CaptureError::Protocol(_))
        ));
    }

    #[test]
    fn partial_updates_ask_again_until_the_screen_is_covered() {
        let mut s = b"RFB 003.008\n\x01\x01\x00\x00\x00\x00".to_vec();
        s.extend_from_slice(&server_init(2, 1, b""));
        // First update: the left pixel only.
        s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 9, 9, 9, 0]);
        let (r, sent) = run(&s, 1);
        assert_eq!(r, Ok(None));
        let request = [3, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        assert!(sent.ends_with(&[&request[..], &request[..]].concat()));
        // Second: the right one.
        s.extend_from_slice(&[0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 7, 7, 7, 0]);
        assert_eq!(run(&s, 1).0.unwrap().unwrap().rgb, vec![9, 9, 9, 7, 7, 7]);
    }

    #[test]
    fn garbage_never_panics_and_is_an_error_or_a_wait() {
        assert!(matches!(
            run(b"HTTP/1.1 400 Bad Request\r\n\r\n", 1).0,
            Err(CaptureError::NotRfb(_))
        ));
        assert!(matches!(
            run(b"RFB 004.000\n", 12).0,
            Err(CaptureError::NotRfb(_))
        ));
        // Every prefix and every single-byte corruption of a good conversation.
        let good = server_38(2, 2, [1, 2, 3, 4]);
        for cut in 0..good.len() {
            let _ = run(&good[..cut], 1);
            for value in [0u8, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[cut] = value;
                let _ = run(&bad, 1 + cut % 7);
            }
        }
        // Pseudo-random streams, with a few fixed seeds.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2000 {
            let mut s = b"RFB 003.008\n".to_vec();
            for _ in 0..(x % 200) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(x as u8);
            }
            let _ = run(&s, 1 + (x % 5) as usize);
        }
    }

    #[test]
    fn a_frame_encodes_as_a_png_of_its_colours() {
        let frame = Frame {
            width: 2,
            height: 1,
            rgb: vec![0x33, 0x66, 0x99, 1, 2, 3],
        };
        let png = encode_png(&frame).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&pixels[..6], &frame.rgb[..]);
    }
}
