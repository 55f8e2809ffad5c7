//! Reading a proxy's CPU time and memory from /proc, summed over its process tree
//! (nginx workers, websockify's forked children).

use std::fs;

/// Linux reports /proc CPU times in USER_HZ ticks, which is 100 on every architecture we run on.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process tree.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TreeSample {
    /// utime+stime of every live process in the tree plus cutime+cstime (reaped children).
    pub cpu_seconds: f64,
    /// Proportional set size (PSS) summed over the tree, in KiB; shared pages are split
    /// between the processes sharing them, so forked children are not double counted.
    pub memory_kib: u64,
    /// Number of processes in the tree.
    pub processes: usize,
}

/// Fields of /proc/PID/stat after the `(comm)` field, which may itself contain spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// `root` and all its descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

fn cpu_seconds(pid: u32) -> f64 {
    // After the comm field: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12) + tick(13) + tick(14)) / TICKS_PER_SECOND
}

fn memory_kib(pid: u32) -> u64 {
    let field = |file: &str, name: &str| -> Option<u64> {
        let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    field("smaps_rollup", "Pss:")
        .or_else(|| field("status", "VmRSS:"))
        .unwrap_or(0)
}

/// Reads CPU time and memory of `root`'s whole process tree.
pub fn sample_tree(root: u32) -> TreeSample {
    let tree = process_tree(root);
    TreeSample {
        cpu_seconds: tree.iter().map(|p| cpu_seconds(*p)).sum(),
        memory_kib: tree.iter().map(|p| memory_kib(*p)).sum(),
        processes: tree.len(),
    }
}

/// The hard limit on open files of this process (a proxy needs two per session).
pub fn open_files_hard_limit() -> Option<u64> {
    open_files_limits("self").map(|(_, hard)| hard)
}

/// The (soft, hard) limits on open files of a process (`self` or a PID): the soft one is
/// what it can open now.
pub fn open_files_limits(pid: &str) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line.split_whitespace().skip(3);
    let soft = fields.next()?.parse().ok()?;
    let hard = fields.next()?.parse().ok()?;
    Some((soft, hard))
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How many descriptors a process holds open.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// utime+stime of this process's threads whose name starts with `prefix` (a runtime of
/// its own, built with `thread_name`), so that its CPU is told apart from the rest.
pub fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut seconds = 0.0;
    for task in dir.flatten() {
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        seconds += (tick(11) + tick(12)) / TICKS_PER_SECOND;
    }
    seconds
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them ("" if unreadable).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        let s = sample_tree(me);
        assert!(s.memory_kib > 0);
        assert!(s.processes >= 1);
        assert!(process_tree(me).contains(&me));
        assert!(open_files_hard_limit().is_some());
        let (soft, hard) = open_files_limits(&me.to_string()).unwrap();
        assert!(soft <= hard);
        let rss = status_kib(me, "VmRSS").unwrap();
        let peak = status_kib(me, "VmHWM").unwrap();
        assert!(rss > 0 && peak >= rss, "RSS {rss} KiB, peak {peak} KiB");
        assert!(status_kib(me, "NoSuchField").is_none());
        assert!(open_fds(me).unwrap() >= 3);
        // Named threads only: a prefix no thread has adds up to nothing.
        assert_eq!(threads_cpu_seconds("no-such-thread-name"), 0.0);
    }
}
