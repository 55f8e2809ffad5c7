//! Runs `tests/browser/driver.mjs` (playwright-core driving Debian's chromium) and talks to it
//! one JSON line per command. Checks first that node, chromium and `npm ci`'s packages exist,
//! and fails with what to install if not: these tests never skip silently.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long one browser command may take (the slowest is a page load plus a connection).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// How long node may take to start Chromium.
const LAUNCH_DEADLINE: Duration = Duration::from_secs(60);

/// Files `npm ci` in tests/browser must have produced.
const REQUIRED_MODULES: [&str; 5] = [
    "@novnc/novnc/core/rfb.js",
    "novnc-1.1/core/rfb.js",
    "@xterm/xterm/lib/xterm.mjs",
    "@xterm/addon-attach/lib/addon-attach.mjs",
    "playwright-core/package.json",
];

/// The npm project with the test pages and the driver. Spelled from the workspace root, so
/// the gateway's own tests (gateway/tests/demo.rs, which runs the demo binary) can use it too.
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Where screenshots go: `$LABGATE_BROWSER_OUTPUT`, else `<target dir>/browser-test-output`.
pub fn output_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LABGATE_BROWSER_OUTPUT") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("browser-test-output")
}

/// The Chromium binary: `$LABGATE_CHROMIUM`, else Debian's.
fn chromium() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("LABGATE_CHROMIUM") {
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!("LABGATE_CHROMIUM={} does not exist", path.display());
        }
        return Ok(path);
    }
    // The real binary; /usr/bin/chromium is Debian's wrapper script around it.
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("chromium is not installed: apt-get install chromium (or set LABGATE_CHROMIUM)")
}

fn check_node_modules() -> anyhow::Result<()> {
    let modules = project_dir().join("node_modules");
    for file in REQUIRED_MODULES {
        if !modules.join(file).exists() {
            bail!(
                "{} is missing: run `npm ci` in {} (needs nodejs >= 20 and npm)",
                modules.join(file).display(),
                project_dir().display()
            );
        }
    }
    Ok(())
}

/// A running driver with one headless Chromium.
pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    log: PathBuf,
}

impl Browser {
    /// Starts node + Chromium trusting `ca_pem` (none: plain http only); the driver's stderr goes
    /// to `<output>/<log_name>.log`.
    pub async fn launch(ca_pem: Option<&Path>, log_name: &str) -> anyhow::Result<Browser> {
        check_node_modules()?;
        let chromium = chromium()?;
        std::fs::create_dir_all(output_dir())?;
        let log = output_dir().join(format!("{log_name}.log"));
        let config = json!({"caPem": ca_pem, "chromium": chromium});
        let mut command = Command::new("node");
        command
            .arg("driver.mjs")
            .arg(config.to_string())
            .current_dir(project_dir());
        if let Some(ca_pem) = ca_pem {
            // For requests the driver itself makes (the viewer's lab-listing stand-in).
            command.env("NODE_EXTRA_CA_CERTS", ca_pem);
        }
        let mut child = match command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                bail!("`node` is not installed: apt-get install nodejs (version 20 or newer)")
            }
            Err(e) => return Err(e).context("starting node driver.mjs"),
        };
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut browser = Browser {
            child,
            stdin,
            stdout,
            next_id: 0,
            log,
        };
        let first = tokio::time::timeout(LAUNCH_DEADLINE, browser.stdout.next_line()).await;
        match first {
            Ok(Ok(Some(line))) if line.contains("\"ready\":true") => Ok(browser),
            Ok(Ok(Some(line))) => bail!("unexpected first line from the driver: {line}"),
            Ok(_) => bail!("the browser driver failed to start: {}", browser.log_tail()),
            Err(_) => bail!(
                "the browser driver did not start within {LAUNCH_DEADLINE:?}: {}",
                browser.log_tail()
            ),
        }
    }

    /// Runs `op` with `args` (a JSON object) in the driver; returns its result.
    pub async fn call(&mut self, op: &str, args: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = args;
        message["op"] = op.into();
        message["id"] = id.into();
        let stdin = self.stdin.as_mut().context("driver already stopped")?;
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .with_context(|| format!("sending {op} to the driver: {}", self.log_tail()))?;
        let reply = tokio::time::timeout(COMMAND_DEADLINE, async {
            loop {
                let Some(line) = self.stdout.next_line().await? else {
                    bail!("the browser driver exited during {op}");
                };
                let reply: Value = serde_json::from_str(&line)
                    .with_context(|| format!("driver wrote a non-JSON line: {line}"))?;
                if reply["id"] == id {
                    return Ok(reply);
                }
            }
        })
        .await
        .with_context(|| format!("browser op {op} took longer than {COMMAND_DEADLINE:?}"))?
        .with_context(|| self.log_tail())?;
        if reply["ok"] == true {
            Ok(reply["result"].clone())
        } else {
            bail!(
                "browser op {op} failed: {}",
                reply["error"].as_str().unwrap_or("?")
            )
        }
    }

    /// Saves a screenshot of page `name` as `<output>/<file>.png`.
    pub async fn screenshot(&mut self, name: &str, file: &str) -> anyhow::Result<()> {
        let path = output_dir().join(format!("{file}.png"));
        self.call("screenshot", json!({"name": name, "file": path}))
            .await?;
        Ok(())
    }

    /// Ends a scenario: on failure, screenshots every open page as `<scenario>-failure-<page>.png`
    /// and panics with the error; then stops the browser.
    pub async fn finish(mut self, scenario: &str, result: anyhow::Result<()>) {
        if let Err(error) = result {
            let shots = self
                .call(
                    "screenshotAll",
                    json!({"dir": output_dir(), "prefix": format!("{scenario}-failure")}),
                )
                .await
                .map(|files| files.to_string())
                .unwrap_or_else(|e| format!("(no screenshots: {e})"));
            panic!(
                "{scenario} failed: {error:#}\nscreenshots: {shots}\ndriver log {}: {}",
                self.log.display(),
                self.log_tail()
            );
        }
        self.stop().await;
    }

    async fn stop(&mut self) {
        // End of input makes the driver close Chromium and exit.
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
        }
    }

    fn exited_within(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        false
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing stdin lets the driver close Chromium itself; a driver that is still running
        // after that (a panic mid-command) is killed.
        drop(self.stdin.take());
        if self.exited_within(Duration::from_secs(2)) {
            return;
        }
        // Playwright closes its browser on SIGTERM; SIGKILL would orphan Chromium.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        if !self.exited_within(Duration::from_secs(3)) {
            let _ = self.child.start_kill();
        }
    }
}
