//! The known picture on the Xvnc display: a solid root colour (`xsetroot`) and one `xterm`
//! window at a fixed place showing a known line, whose pixels change when keys are typed into it.

use std::io::ErrorKind;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

/// The root window's colour, `#2a7f3f`.
pub const ROOT_COLOUR: [u8; 3] = [0x2a, 0x7f, 0x3f];
/// The xterm's background; its text is black.
pub const WINDOW_COLOUR: [u8; 3] = [0xff, 0xff, 0xff];
/// The line the window shows.
pub const KNOWN_TEXT: &str = "LABGATE KNOWN PICTURE";

/// An axis-aligned rectangle in framebuffer pixels: x, y, width, height.
pub type Rect = [u32; 4];

// The xterm sits at `-geometry 60x8+120+90`: with the built-in 6x13 `fixed` font its window is
// x 120..484, y 90..198 (60*6 by 8*13 pixels of text inside a 2-pixel internal border).

/// The first text row (the known line).
pub const FIRST_ROW: Rect = [122, 92, 360, 13];
/// The second text row, where typed characters are echoed.
pub const SECOND_ROW: Rect = [122, 105, 360, 13];

/// Points on the root window, well away from the xterm.
pub const ROOT_POINTS: [[u32; 2]; 6] = [
    [5, 5],
    [795, 5],
    [5, 595],
    [795, 595],
    [400, 450],
    [700, 300],
];
/// Points inside the xterm that no text reaches (bottom rows, right half).
pub const WINDOW_BLANK_POINTS: [[u32; 2]; 3] = [[300, 180], [470, 190], [200, 170]];

/// X clients drawing the picture; the xterm is stopped on drop.
pub struct Picture {
    xterm: Child,
}

impl Drop for Picture {
    fn drop(&mut self) {
        let _ = self.xterm.kill();
        let _ = self.xterm.wait();
    }
}

fn spawn(command: &mut Command, binary: &str, package: &str) -> anyhow::Result<Child> {
    match command.spawn() {
        Ok(child) => Ok(child),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("`{binary}` is not installed: apt-get install {package}")
        }
        Err(e) => Err(e).with_context(|| format!("starting {binary}")),
    }
}

impl Picture {
    /// Paints the root window and opens the xterm on `display` (e.g. `:123`). The xterm maps
    /// its window shortly after; callers wait for it by looking at the screen.
    pub fn draw(display: &str) -> anyhow::Result<Picture> {
        let colour = format!(
            "#{:02x}{:02x}{:02x}",
            ROOT_COLOUR[0], ROOT_COLOUR[1], ROOT_COLOUR[2]
        );
        let status = spawn(
            Command::new("xsetroot")
                .args(["-display", display, "-solid", &colour])
                .stdin(Stdio::null()),
            "xsetroot",
            "x11-xserver-utils",
        )?
        .wait()?;
        if !status.success() {
            bail!("xsetroot -display {display} failed: {status}");
        }
        // `cat` on the xterm's PTY: the known line stays, typed keys are echoed below it.
        let xterm = spawn(
            Command::new("xterm")
                .args(["-display", display])
                .args(["-geometry", "60x8+120+90", "-fn", "fixed"])
                .args(["-bg", "#ffffff", "-fg", "#000000", "-bw", "0"])
                .args(["-T", "labgate", "-e", "sh", "-c"])
                .arg(format!("printf '{KNOWN_TEXT}\\n'; exec cat"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "xterm",
            "xterm",
        )?;
        Ok(Picture { xterm })
    }
}

/// Whether two colours differ by at most `tolerance` in every channel (lossy encodings).
pub fn close_to(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}
