//! The static targets file: labs, their owners and members, and where each
//! VM's screen and serial console can be reached.
//!
//! ```yaml
//! labs:
//!   - name: lab-1
//!     owner: alice@example.com
//!     members: [tutor@example.com]
//!     vms:
//!       - name: vm1
//!         screen: unix:/run/labvms/vm1-vnc.sock    # QEMU -vnc unix:…, libvirt <graphics type='vnc' socket=…>
//!         console: unix:/run/labvms/vm1-serial.sock
//!       - name: router
//!         screen: tcp:10.0.0.7:5901                # any RFB server
//!         console: pty:/usr/bin/virsh console router --force
//! ```
//!
//! Names follow the same rules as in session URLs (DNS labels). A `pty:`
//! command is split on whitespace (no quoting: wrap anything fancier in a
//! script). Mistakes are reported with the lab and VM they are in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use labgate_policies::Lab;
use serde::Deserialize;

use crate::index::LabEntry;
use crate::route::is_dns_label;

/// Where a screen or console is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `tcp:HOST:PORT`: a TCP connection (RFB server, QEMU `-serial tcp:…,server`).
    Tcp(String),
    /// `unix:PATH`: a unix socket (QEMU `-vnc unix:…`, a chardev socket).
    Unix(PathBuf),
    /// `pty:COMMAND ARGS…`: a local command run on a fresh PTY per session.
    Pty(Vec<String>),
}

impl Target {
    /// Parses `tcp:HOST:PORT`, `unix:PATH` or `pty:COMMAND …`.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(addr) = s.strip_prefix("tcp:") {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("{s:?}: expected tcp:HOST:PORT"));
            }
            Ok(Target::Tcp(addr.to_string()))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: expected unix:/absolute/path"));
            }
            Ok(Target::Unix(PathBuf::from(path)))
        } else if let Some(command) = s.strip_prefix("pty:") {
            let argv: Vec<String> = command.split_whitespace().map(str::to_string).collect();
            if argv.is_empty() {
                return Err(format!("{s:?}: expected pty:COMMAND [ARGS…]"));
            }
            Ok(Target::Pty(argv))
        } else {
            Err(format!(
                "{s:?}: expected tcp:HOST:PORT, unix:PATH or pty:COMMAND"
            ))
        }
    }

    /// What the logs say about the target (no secrets can be in it).
    pub fn describe(&self) -> String {
        match self {
            Target::Tcp(addr) => format!("tcp:{addr}"),
            Target::Unix(path) => format!("unix:{}", path.display()),
            Target::Pty(argv) => format!("pty:{}", argv.join(" ")),
        }
    }
}

/// One VM's targets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmTargets {
    /// The RFB server showing its screen.
    pub screen: Option<Target>,
    /// Its serial console.
    pub console: Option<Target>,
}

/// One lab: who may open it, and its VMs by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticLab {
    /// Owner and members.
    pub lab: Lab,
    /// VMs, sorted by name.
    pub vms: BTreeMap<String, VmTargets>,
}

/// The parsed file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticTargets {
    /// Labs by name.
    pub labs: HashMap<String, StaticLab>,
}

impl StaticTargets {
    /// The targets of `lab`'s VM `vm`.
    pub fn vm(&self, lab: &str, vm: &str) -> Option<&VmTargets> {
        self.labs.get(lab)?.vms.get(vm)
    }

    /// The lab index entries (owner and members) of every lab.
    pub fn index_entries(&self) -> HashMap<String, LabEntry> {
        self.labs
            .iter()
            .map(|(name, l)| (name.clone(), LabEntry::Lab(l.lab.clone())))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    labs: Vec<LabSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabSpec {
    #[serde(alias = "namespace")]
    name: String,
    owner: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    vms: Vec<VmSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmSpec {
    name: String,
    #[serde(default)]
    screen: Option<String>,
    #[serde(default)]
    console: Option<String>,
}

/// Errors reading a static targets file.
#[derive(Debug, thiserror::Error)]
pub enum TargetsFileError {
    #[error("reading static targets file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing static targets file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("static targets file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Reads and checks a static targets file.
///
/// # Errors
/// [`TargetsFileError`] naming the file and, for a bad entry, the lab and VM.
pub fn load(path: &Path) -> Result<StaticTargets, TargetsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TargetsFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ParseError::Yaml(source) => TargetsFileError::Parse {
            path: path.to_path_buf(),
            source,
        },
        ParseError::Invalid(message) => TargetsFileError::Invalid {
            path: path.to_path_buf(),
            message,
        },
    })
}

enum ParseError {
    Yaml(serde_yaml::Error),
    Invalid(String),
}

fn parse(text: &str) -> Result<StaticTargets, ParseError> {
    let spec: FileSpec = serde_yaml::from_str(text).map_err(ParseError::Yaml)?;
    let mut labs = HashMap::new();
    for lab in spec.labs {
        let invalid = |m: String| ParseError::Invalid(format!("lab {:?}: {m}", lab.name));
        if !is_dns_label(&lab.name) {
            return Err(invalid("not a valid lab name (lowercase DNS label)".into()));
        }
        if lab.owner.trim().is_empty() {
            return Err(invalid("owner is empty".into()));
        }
        let mut vms = BTreeMap::new();
        for vm in &lab.vms {
            if !is_dns_label(&vm.name) {
                return Err(invalid(format!(
                    "VM {:?}: not a valid VM name (lowercase DNS label)",
                    vm.name
                )));
            }
            let target = |s: &Option<String>| {
                s.as_deref()
                    .map(Target::parse)
                    .transpose()
                    .map_err(|m| invalid(format!("VM {:?}: {m}", vm.name)))
            };
            let targets = VmTargets {
                screen: target(&vm.screen)?,
                console: target(&vm.console)?,
            };
            if matches!(targets.screen, Some(Target::Pty(_))) {
                return Err(invalid(format!(
                    "VM {:?}: a screen is an RFB server (tcp: or unix:), not a pty: command",
                    vm.name
                )));
            }
            if vms.insert(vm.name.clone(), targets).is_some() {
                return Err(invalid(format!("VM {:?} is listed twice", vm.name)));
            }
        }
        let entry = StaticLab {
            lab: Lab {
                namespace: lab.name.clone(),
                owner: lab.owner.clone(),
                members: lab.members.clone(),
            },
            vms,
        };
        if labs.insert(lab.name.clone(), entry).is_some() {
            return Err(ParseError::Invalid(format!(
                "lab {:?} is listed twice",
                lab.name
            )));
        }
    }
    Ok(StaticTargets { labs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> StaticTargets {
        match parse(text) {
            Ok(t) => t,
            Err(ParseError::Yaml(e)) => panic!("{e}"),
            Err(ParseError::Invalid(m)) => panic!("{m}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(t) => panic!("accepted: {t:?}"),
            Err(ParseError::Yaml(e)) => e.to_string(),
            Err(ParseError::Invalid(m)) => m,
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("tcp:127.0.0.1:5901"),
            Ok(Target::Tcp("127.0.0.1:5901".into()))
        );
        assert_eq!(
            Target::parse("tcp:[::1]:5901"),
            Ok(Target::Tcp("[::1]:5901".into()))
        );
        assert_eq!(
            Target::parse("unix:/run/vm.sock"),
            Ok(Target::Unix("/run/vm.sock".into()))
        );
        assert_eq!(
            Target::parse("pty:/bin/sh -i"),
            Ok(Target::Pty(vec!["/bin/sh".into(), "-i".into()]))
        );
        for bad in [
            "tcp:host",
            "tcp::5900",
            "tcp:host:99999",
            "unix:relative.sock",
            "pty:   ",
            "vnc://host",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn file_parses_with_labs_vms_and_members() {
        let t = parse_ok(
            "labs:\n  - name: lab-1\n    owner: alice\n    members: [bob]\n    vms:\n      \
             - name: vm1\n        screen: unix:/s.sock\n        console: pty:/bin/sh\n      \
             - name: vm2\n        console: tcp:localhost:4555\n",
        );
        let lab = &t.labs["lab-1"];
        assert_eq!(lab.lab.owner, "alice");
        assert_eq!(lab.lab.members, vec!["bob".to_string()]);
        assert_eq!(
            t.vm("lab-1", "vm1").unwrap().screen,
            Some(Target::Unix("/s.sock".into()))
        );
        assert_eq!(t.vm("lab-1", "vm2").unwrap().screen, None);
        assert!(t.vm("lab-1", "vm3").is_none());
        assert!(matches!(
            t.index_entries().get("lab-1"),
            Some(LabEntry::Lab(l)) if l.owner == "alice"
        ));
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse_err(
            "labs:\n  - name: lab-1\n    owner: a\n    vms:\n      - name: vm1\n        screen: pty:/bin/sh\n",
        );
        assert!(
            e.contains("lab-1") && e.contains("vm1") && e.contains("RFB"),
            "{e}"
        );
        let e = parse_err("labs:\n  - name: Lab_1\n    owner: a\n");
        assert!(e.contains("Lab_1"), "{e}");
        let e = parse_err(
            "labs:\n  - name: l\n    owner: a\n    vms:\n      - name: v\n        screen: vnc:x\n",
        );
        assert!(e.contains("tcp:HOST:PORT"), "{e}");
        let e = parse_err(
            "labs:\n  - name: l\n    owner: a\n    vms:\n      - {name: v}\n      - {name: v}\n",
        );
        assert!(e.contains("twice"), "{e}");
        let e = parse_err("labs:\n  - name: l\n    owner: a\n    vm: []\n");
        assert!(e.contains("unknown field"), "{e}");
        let e = parse_err("labs:\n  - name: l\n    owner: ' '\n");
        assert!(e.contains("owner"), "{e}");
    }
}
