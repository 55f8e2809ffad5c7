//! The real upstream fixtures on their own: Xvnc speaks RFB on its unix socket and is a usable X
//! display; the socat console gives each connection its own PTY shell; both stop on drop.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use labgate_tests::upstreams::{SerialConsole, Xvnc};

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn wait_dead(pid: u32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn xvnc_speaks_rfb_serves_x_and_stops_on_drop() {
    let xvnc = Xvnc::start().unwrap();
    let mut rfb = UnixStream::connect(xvnc.socket()).unwrap();
    rfb.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut banner = [0u8; 12];
    rfb.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"RFB 003.008\n");

    // The display is a real X server: an X client can draw on it.
    let status = std::process::Command::new("xsetroot")
        .args(["-solid", "#336699"])
        .env("DISPLAY", xvnc.display())
        .status();
    match status {
        Ok(s) => assert!(s.success(), "xsetroot on {} failed", xvnc.display()),
        Err(e) => {
            eprintln!("xsetroot unavailable ({e}); install x11-xserver-utils to check drawing")
        }
    }

    let pid = xvnc.pid();
    let socket = xvnc.socket();
    drop(xvnc);
    assert!(wait_dead(pid), "Xvnc stopped");
    assert!(UnixStream::connect(socket).is_err());
}

#[test]
fn two_xvnc_servers_pick_different_displays() {
    let a = Xvnc::start().unwrap();
    let b = Xvnc::start().unwrap();
    assert_ne!(a.display(), b.display());
}

#[test]
fn serial_console_gives_a_pty_shell_per_connection() {
    let console = SerialConsole::start().unwrap();
    let mut conn = UnixStream::connect(console.socket()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"echo tty-$(tty | cut -c1-8)\n").unwrap();
    let mut output = String::new();
    let mut buf = [0u8; 1024];
    while !output.contains("tty-/dev/pts") {
        let n = conn.read(&mut buf).expect("shell output in time");
        assert!(n > 0, "shell ended early: {output:?}");
        output.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        output.contains("\r\n"),
        "a PTY translates newlines: {output:?}"
    );

    let pid = console.pid();
    drop(conn);
    drop(console);
    assert!(wait_dead(pid), "socat stopped");
}
