//! KubeVirt's `virtualmachineinstances/vnc/screenshot` subresource: a PNG of the VM's screen.
//!
//! virt-api checks the VMI as for `vnc` (`validateVMIForVNC`: 404 for a missing VMI, 400 "No
//! graphics devices are present.", 400 "VMI is not running"; the stand-in's VNC check also answers
//! 409 "VMI is paused") and answers `200 image/png`. Whether a capture disturbs a VNC viewer
//! depends on the KubeVirt version, chosen with [`super::StandIn::set_screenshot_mode`]:
//! - [`ScreenshotMode::Libvirt`] (KubeVirt >= 1.7, the default): virt-handler asks libvirt; live
//!   viewers are untouched. Here: a separate, shared RFB connection to the real Xvnc.
//! - [`ScreenshotMode::PreserveSession`] (1.6.3 to 1.6.x): virt-api opens a VNC connection with
//!   `preserveSession=true`; with a viewer connected it fails with 500 "Active VNC connection".
//! - [`ScreenshotMode::TakesOver`] (0.58 to 1.6.2): a plain VNC connection, which drops the viewer.
//!
//! The capture is a minimal RFB 3.8 client (security None, shared ClientInit, 32-bit true colour,
//! Raw encoding, one full FramebufferUpdateRequest) bounded to 2 s like virt-api's wait for the
//! framebuffer update, encoded with the `png` crate.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Response;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::kubevirt::{SubresourceCall, UpstreamAddr, check_vmi, dial};
use super::status::ApiError;
use super::{Body, Shared};

/// Which KubeVirt's screenshot behaviour the stand-in copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScreenshotMode {
    /// KubeVirt >= 1.7: libvirt takes the screenshot; VNC viewers are not touched.
    #[default]
    Libvirt,
    /// KubeVirt 1.6.3 to 1.6.x: refused (500) while a VNC viewer is connected.
    PreserveSession,
    /// KubeVirt 0.58 to 1.6.2: the capture's VNC connection drops the viewer.
    TakesOver,
}

/// virt-api's wait for the framebuffer update.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest screen the capture accepts (pixels per side).
const MAX_SIDE: u16 = 8192;

/// Answers `GET …/virtualmachineinstances/{name}/vnc/screenshot`.
pub async fn serve(shared: &Shared, call: SubresourceCall<'_>) -> Result<Response<Body>, ApiError> {
    // validateVMIForVNC: the same checks as the VNC subresource.
    let vnc_call = SubresourceCall {
        kind: "vnc".to_string(),
        ..call
    };
    check_vmi(shared, &vnc_call)?;
    let (mode, delay) = *shared
        .kubevirt
        .screenshot_setup
        .lock()
        .expect("kubevirt lock");
    let key = (
        vnc_call.namespace.clone(),
        vnc_call.name.clone(),
        "vnc".to_string(),
    );
    let session = match mode {
        ScreenshotMode::Libvirt => None,
        ScreenshotMode::PreserveSession if shared.kubevirt.has_session(&key) => {
            return Err(ApiError::internal(
                "Can't connect to websocket (503): Active VNC connection. Request denied.",
            ));
        }
        // The capture's own VNC connection is the VMI's VNC session while it runs.
        ScreenshotMode::PreserveSession | ScreenshotMode::TakesOver => {
            Some(shared.kubevirt.open_session(key.clone()).0)
        }
    };
    let addr = shared
        .kubevirt
        .upstream(&vnc_call.namespace, &vnc_call.name, "vnc")
        .ok_or_else(|| ApiError::internal("upstream disappeared"))?;
    let captured = async {
        tokio::time::sleep(delay).await;
        tokio::time::timeout(CAPTURE_TIMEOUT, capture(&addr))
            .await
            .map_err(|_| "timed out waiting for VNC server messages".to_string())?
    }
    .await;
    if let Some(id) = session {
        shared.kubevirt.close_session(&key, id);
    }
    let png = captured.map_err(|e| ApiError::internal(format!("Internal error occurred: {e}")))?;
    Ok(Response::builder()
        .status(200)
        .header("content-type", "image/png")
        .body(
            Full::new(Bytes::from(png))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts"))
}

/// One full-screen capture from the RFB server at `addr`, as PNG.
async fn capture(addr: &UpstreamAddr) -> Result<Vec<u8>, String> {
    let mut io = dial(addr)
        .await
        .map_err(|e| format!("dialing the VNC server: {e}"))?;
    let (width, height, rgb) = read_screen(&mut io)
        .await
        .map_err(|e| format!("reading the VNC screen: {e}"))?;
    encode_png(width, height, &rgb)
}

fn bad(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string())
}

/// The RFB exchange: returns width, height and RGB bytes of the whole screen.
async fn read_screen<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
) -> std::io::Result<(u16, u16, Vec<u8>)> {
    let mut version = [0u8; 12];
    io.read_exact(&mut version).await?;
    if !version.starts_with(b"RFB 003.") {
        return Err(bad("not an RFB server"));
    }
    io.write_all(b"RFB 003.008\n").await?;
    let count = io.read_u8().await?;
    if count == 0 {
        return Err(bad("the server refused the connection"));
    }
    let mut types = vec![0u8; count.into()];
    io.read_exact(&mut types).await?;
    if !types.contains(&1) {
        return Err(bad("the server requires authentication"));
    }
    io.write_all(&[1]).await?;
    if io.read_u32().await? != 0 {
        return Err(bad("security handshake failed"));
    }
    // Shared: other viewers stay connected.
    io.write_all(&[1]).await?;
    let width = io.read_u16().await?;
    let height = io.read_u16().await?;
    let mut server_format = [0u8; 16];
    io.read_exact(&mut server_format).await?;
    let name_len = io.read_u32().await?;
    if name_len > 4096 {
        return Err(bad("desktop name too long"));
    }
    let mut name = vec![0u8; name_len as usize];
    io.read_exact(&mut name).await?;
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(bad("unusable screen size"));
    }
    // SetPixelFormat: 32 bpp, depth 24, little endian, true colour, 8 bits per channel at
    // shifts 16/8/0, so each pixel arrives as B, G, R, unused.
    io.write_all(&[
        0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ])
    .await?;
    // SetEncodings: Raw only.
    io.write_all(&[2, 0, 0, 1, 0, 0, 0, 0]).await?;
    // FramebufferUpdateRequest, not incremental, the whole screen.
    let mut request = vec![3, 0, 0, 0, 0, 0];
    request.extend_from_slice(&width.to_be_bytes());
    request.extend_from_slice(&height.to_be_bytes());
    io.write_all(&request).await?;

    let (w, h) = (usize::from(width), usize::from(height));
    let mut rgb = vec![0u8; w * h * 3];
    loop {
        match io.read_u8().await? {
            // FramebufferUpdate
            0 => {
                let _padding = io.read_u8().await?;
                let rects = io.read_u16().await?;
                for _ in 0..rects {
                    let x = usize::from(io.read_u16().await?);
                    let y = usize::from(io.read_u16().await?);
                    let rw = usize::from(io.read_u16().await?);
                    let rh = usize::from(io.read_u16().await?);
                    let encoding = io.read_i32().await?;
                    if encoding != 0 {
                        return Err(bad("the server sent an encoding other than Raw"));
                    }
                    if x + rw > w || y + rh > h {
                        return Err(bad("rectangle outside the screen"));
                    }
                    let mut pixels = vec![0u8; rw * rh * 4];
                    io.read_exact(&mut pixels).await?;
                    for row in 0..rh {
                        for col in 0..rw {
                            let src = (row * rw + col) * 4;
                            let dst = ((y + row) * w + x + col) * 3;
                            rgb[dst] = pixels[src + 2];
                            rgb[dst + 1] = pixels[src + 1];
                            rgb[dst + 2] = pixels[src];
                        }
                    }
                }
                return Ok((width, height, rgb));
            }
            // SetColourMapEntries (not used with true colour, skipped if sent)
            1 => {
                let _padding = io.read_u8().await?;
                let _first = io.read_u16().await?;
                let colours = io.read_u16().await?;
                let mut skip = vec![0u8; usize::from(colours) * 6];
                io.read_exact(&mut skip).await?;
            }
            // Bell
            2 => {}
            // ServerCutText
            3 => {
                let mut padding = [0u8; 3];
                io.read_exact(&mut padding).await?;
                let len = io.read_u32().await?;
                if len > 1024 * 1024 {
                    return Err(bad("cut text too long"));
                }
                let mut skip = vec![0u8; len as usize];
                io.read_exact(&mut skip).await?;
            }
            _ => return Err(bad("unknown server message")),
        }
    }
}

/// RGB pixels as an 8-bit RGB PNG.
pub fn encode_png(width: u16, height: u16, rgb: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width.into(), height.into());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}
