//! Checksums at both ends of an echo session: what one side sent and received, as a byte
//! count and a CRC-32 of the stream in order. The load generator keeps one pair per session;
//! `bench-upstream --echo-ledger-file` keeps the upstream's pair per VMI name and writes
//! them all to a JSON file, so the two ends can be compared session by session: what the
//! upstream received must equal what the client sent, and the other way round.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// A running count and CRC-32 of one direction of one session's stream.
#[derive(Clone, Default)]
pub struct Tally {
    bytes: u64,
    crc: crc32fast::Hasher,
}

impl Tally {
    pub fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.crc.update(data);
    }

    pub fn sum(&self) -> Sum {
        Sum {
            bytes: self.bytes,
            crc: self.crc.clone().finalize(),
        }
    }
}

/// The bytes one side saw in one direction: how many, and their CRC-32 in stream order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sum {
    pub bytes: u64,
    pub crc: u32,
}

/// One session from one side: what that side received and what it sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSums {
    pub received: Sum,
    pub sent: Sum,
}

impl SessionSums {
    /// Whether `other` (the far end) received what this side sent and sent what it received.
    pub fn mirrors(&self, other: &SessionSums) -> bool {
        self.sent == other.received && self.received == other.sent
    }
}

/// The upstream's ledger file: every finished echo session by VMI name.
pub type Ledger = HashMap<String, SessionSums>;

/// Reads a ledger file (a missing file is an empty ledger).
pub fn read_ledger(path: &Path) -> anyhow::Result<Ledger> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("parse the ledger {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::new()),
        Err(e) => Err(e).with_context(|| format!("read the ledger {}", path.display())),
    }
}

/// Writes a ledger file aside and renames it, so a reader never sees half of it.
pub fn write_ledger(path: &Path, ledger: &Ledger) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec(ledger)?)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_follow_the_stream_and_mirror_the_far_end() {
        let (mut a, mut b) = (Tally::default(), Tally::default());
        a.add(b"hello ");
        a.add(b"world");
        b.add(b"hello world");
        assert_eq!(a.sum(), b.sum(), "the same bytes however they were split");
        assert_eq!(a.sum().bytes, 11);
        let mut swapped = Tally::default();
        swapped.add(b"world hello");
        assert_ne!(a.sum().crc, swapped.sum().crc, "order matters");

        let client = SessionSums {
            sent: a.sum(),
            received: Sum::default(),
        };
        let upstream = SessionSums {
            received: a.sum(),
            sent: Sum::default(),
        };
        assert!(client.mirrors(&upstream));
        let short = SessionSums {
            received: Sum {
                bytes: 10,
                ..a.sum()
            },
            sent: Sum::default(),
        };
        assert!(!client.mirrors(&short));
    }

    #[test]
    fn ledger_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        assert!(read_ledger(&path).unwrap().is_empty());
        let mut ledger = Ledger::new();
        let mut t = Tally::default();
        t.add(&[1, 2, 3]);
        ledger.insert(
            "echo-x-1".into(),
            SessionSums {
                received: t.sum(),
                sent: t.sum(),
            },
        );
        write_ledger(&path, &ledger).unwrap();
        assert_eq!(read_ledger(&path).unwrap(), ledger);
        std::fs::write(&path, b"not json").unwrap();
        assert!(read_ledger(&path).is_err());
    }
}
