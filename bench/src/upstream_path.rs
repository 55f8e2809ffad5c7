//! The KubeVirt subresource paths the upstream serves and how a path picks its mode.
//!
//! The VMI name selects the behaviour, so every contender (including the prototype-style
//! relay, which always dials `vnc`) reaches both: a VMI named `stream…` sends a framebuffer-like
//! stream, one named `echo…` echoes like a serial console, one named `screen…` greets like a
//! VNC server and then echoes. Both `vnc` and `console` work.
//! The load generator numbers the VMIs (`stream-3`), one per session.

/// What an upstream session does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Send binary messages as fast as the socket takes them (like a VNC framebuffer).
    Stream,
    /// Echo every binary message back (like a serial console).
    Echo,
    /// A VNC server's opening: the 12-byte RFB version greeting, then echo of whatever
    /// arrives (the time-to-first-screen-byte scenario waits for the greeting).
    Greet,
}

/// What a VNC server sends first (RFC 6143 §7.1.1), and [`Mode::Greet`] sends on connect.
pub const RFB_GREETING: &[u8] = b"RFB 003.008\n";

impl Mode {
    /// The VMI name prefix the load generator uses for this mode.
    pub fn vmi(self) -> &'static str {
        match self {
            Mode::Stream => "stream",
            Mode::Echo => "echo",
            Mode::Greet => "screen",
        }
    }

    /// The subresource a browser would open for this mode.
    pub fn subresource(self) -> &'static str {
        match self {
            Mode::Stream => "vnc",
            Mode::Echo => "console",
            Mode::Greet => "vnc",
        }
    }

    /// The one-byte mode selector the plain TCP upstream expects first (used behind websockify).
    pub fn tcp_selector(self) -> u8 {
        match self {
            Mode::Stream => b'S',
            Mode::Echo => b'E',
            Mode::Greet => b'G',
        }
    }

    pub fn from_tcp_selector(b: u8) -> Option<Self> {
        match b {
            b'S' => Some(Mode::Stream),
            b'E' => Some(Mode::Echo),
            b'G' => Some(Mode::Greet),
            _ => None,
        }
    }
}

/// The VMI name of `/apis/subresources.kubevirt.io/{v1|v1alpha3}/namespaces/{ns}/virtualmachineinstances/{vmi}/{vnc|console}`
/// (query ignored), if the path is one.
pub fn vmi_for_path(path_and_query: &str) -> Option<&str> {
    let path = path_and_query.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [
            "",
            "apis",
            "subresources.kubevirt.io",
            "v1" | "v1alpha3",
            "namespaces",
            ns,
            "virtualmachineinstances",
            vmi,
            "vnc" | "console",
        ] if !ns.is_empty() => Some(*vmi),
        _ => None,
    }
}

/// The mode a subresource path's VMI name selects.
pub fn mode_for_path(path_and_query: &str) -> Option<Mode> {
    let vmi = vmi_for_path(path_and_query)?;
    if vmi.starts_with("stream") {
        Some(Mode::Stream)
    } else if vmi.starts_with("echo") {
        Some(Mode::Echo)
    } else if vmi.starts_with("screen") {
        Some(Mode::Greet)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_select_modes() {
        let p = |vmi: &str, sub: &str| {
            format!(
                "/apis/subresources.kubevirt.io/v1/namespaces/lab-1/virtualmachineinstances/{vmi}/{sub}"
            )
        };
        assert_eq!(mode_for_path(&p("stream", "vnc")), Some(Mode::Stream));
        assert_eq!(mode_for_path(&p("echo", "console")), Some(Mode::Echo));
        assert_eq!(mode_for_path(&p("screen-3", "vnc")), Some(Mode::Greet));
        for mode in [Mode::Stream, Mode::Echo, Mode::Greet] {
            assert_eq!(Mode::from_tcp_selector(mode.tcp_selector()), Some(mode));
        }
        assert_eq!(
            mode_for_path(&(p("echo", "vnc") + "?preserveSession=true")),
            Some(Mode::Echo)
        );
        assert_eq!(mode_for_path(&p("other", "vnc")), None);
        assert_eq!(mode_for_path(&p("stream", "screenshot")), None);
        assert_eq!(mode_for_path("/labs/lab-1/stream/vnc"), None);
        assert_eq!(
            vmi_for_path(&(p("echo-c7-12", "console") + "?x=1")),
            Some("echo-c7-12")
        );
        assert_eq!(vmi_for_path("/labs/lab-1/echo/console"), None);
    }
}
