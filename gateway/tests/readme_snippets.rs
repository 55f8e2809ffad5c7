//! The README's token snippets for portals, run as written (Python with
//! PyJWT, JavaScript with jose; only the secret's path is replaced), make
//! tokens the gateway's verifier accepts with the claims they show.
//! The libraries are installed on first use under `target/` (pinned in
//! `gateway/tests/snippets/`), like the chart checks' virtualenv.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use labgate_gateway::Metrics;
use labgate_gateway::token::{KeyFile, TokenSettings, TokenVerifier};

const SECRET: &str = "readme-snippet-secret-0123456789abcdef";
const README_SECRET_PATH: &str = "/etc/portal/labgate-secret";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first ```lang block of the README's "Minting tokens" section.
fn snippet(lang: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find("### Minting tokens")
        .expect("README has a Minting tokens section")..];
    let fence = format!("```{lang}\n");
    let start = section
        .find(&fence)
        .unwrap_or_else(|| panic!("no {lang} snippet"))
        + fence.len();
    let body = &section[start..];
    let code = &body[..body.find("```").unwrap()];
    assert!(
        code.contains(README_SECRET_PATH),
        "the {lang} snippet reads the secret elsewhere"
    );
    code.to_string()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn assert_accepted(token: &str, dir: &Path) {
    let secret = dir.join("gateway-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let verifier = TokenVerifier::new(
        TokenSettings {
            hmac_secret_files: vec![KeyFile {
                kid: None,
                path: secret,
            }],
            audiences: vec!["labgate".into()],
            ..TokenSettings::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let claims = verifier
        .verify(token.trim())
        .await
        .expect("snippet token refused");
    assert_eq!(claims.sub, "alice@example.com");
    assert_eq!(claims.lab.as_deref(), Some("lab-alice-1"));
    assert_eq!(claims.vmi.as_deref(), Some("vm1"));
    assert_eq!(claims.kind.as_deref(), Some("vnc"));
}

#[tokio::test]
async fn the_python_snippet_makes_an_accepted_token() {
    let venv = repo().join("target/snippets-venv");
    let python = venv.join("bin/python");
    if !venv.join("bin/pip").exists()
        || !Command::new(&python)
            .args(["-c", "import jwt"])
            .status()
            .is_ok_and(|s| s.success())
    {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(repo().join("gateway/tests/snippets/requirements.txt")));
    }
    let dir = tempfile::tempdir().unwrap();
    // The portal's copy of the secret, as `echo` writes it (with a newline).
    let secret = dir.path().join("portal-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let code = snippet("python").replace(README_SECRET_PATH, secret.to_str().unwrap())
        + "\nprint(token)\n";
    let token = run(Command::new(&python).arg("-c").arg(code));
    assert_accepted(&token, dir.path()).await;
}

#[tokio::test]
async fn the_javascript_snippet_makes_an_accepted_token() {
    let project = repo().join("target/snippets-node");
    if !project.join("node_modules/jose/package.json").exists() {
        std::fs::create_dir_all(&project).unwrap();
        std::fs::copy(
            repo().join("gateway/tests/snippets/package.json"),
            project.join("package.json"),
        )
        .unwrap();
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&project));
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("portal-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let code = snippet("js").replace(README_SECRET_PATH, secret.to_str().unwrap())
        + "\nconsole.log(token);\n";
    // Next to node_modules, so `import "jose"` resolves.
    let script = project.join(format!("snippet-{}.mjs", std::process::id()));
    std::fs::write(&script, code).unwrap();
    let token = run(Command::new("node").arg(&script));
    let _ = std::fs::remove_file(&script);
    assert_accepted(&token, dir.path()).await;
}
