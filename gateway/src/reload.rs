//! Noticing when files on disk change, for certificates, keys and lab files.
//!
//! Kubernetes updates mounted Secrets by swapping a symlink, so the watched
//! files are compared by modification time *and* length after following
//! links; polling every second is cheap and works on every filesystem,
//! unlike inotify through symlinked Secret volumes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Remembers what a set of files looked like when last loaded.
#[derive(Debug, Clone)]
pub struct FileStamps {
    files: Vec<(PathBuf, Option<(SystemTime, u64)>)>,
}

impl FileStamps {
    /// Records the current state of `paths`.
    pub fn new<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> FileStamps {
        FileStamps {
            files: paths
                .into_iter()
                .map(|p| {
                    let p = p.as_ref().to_path_buf();
                    let stamp = stamp(&p);
                    (p, stamp)
                })
                .collect(),
        }
    }

    /// Whether any file changed since the last call (or since [`FileStamps::new`]);
    /// records the new state.
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        for (path, old) in &mut self.files {
            let now = stamp(path);
            if now != *old {
                *old = now;
                changed = true;
            }
        }
        changed
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
