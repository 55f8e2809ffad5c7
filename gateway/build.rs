//! Embeds the viewer page (`web/dist/`, built by `scripts/build-viewer.sh`) into the gateway.
//!
//! Writes `$OUT_DIR/viewer_assets.rs` with the page template and every hashed asset as
//! `include_bytes!`. Without `web/dist/` the gateway still builds and serves the API only.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dist = manifest.join("web/dist");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    // Watching a directory makes cargo look at everything below it. Without dist/, watch web/
    // so that building the bundle (which creates dist/) re-runs this script.
    if dist.is_dir() {
        println!("cargo:rerun-if-changed=web/dist");
    } else {
        println!("cargo:rerun-if-changed=web");
    }
    let code = match embedded(&dist) {
        Some(code) => code,
        None => "pub const INDEX: Option<&[u8]> = None;\npub const ASSETS: &[Asset] = &[];\n"
            .to_string(),
    };
    std::fs::write(out.join("viewer_assets.rs"), code).expect("writing viewer_assets.rs");
}

/// The generated module's text, or `None` when there is no complete bundle.
fn embedded(dist: &Path) -> Option<String> {
    let index = dist.join("index.html");
    let assets = dist.join("assets");
    if !index.is_file() || !assets.is_dir() {
        return None;
    }
    let mut names: Vec<(String, PathBuf)> = std::fs::read_dir(&assets)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    names.sort();
    let mut code = format!("pub const INDEX: Option<&[u8]> = Some(include_bytes!({index:?}));\n");
    code.push_str("pub const ASSETS: &[Asset] = &[\n");
    for (name, path) in &names {
        if name.ends_with(".gz") {
            continue;
        }
        let gzip_name = format!("{name}.gz");
        let gzip = match names.iter().find(|(n, _)| *n == gzip_name) {
            Some((_, gz)) => format!("Some(include_bytes!({gz:?}))"),
            None => "None".to_string(),
        };
        let Some(content_type) = content_type(name) else {
            println!("cargo:warning=viewer: not embedding {name} (unknown file type)");
            continue;
        };
        let _ = writeln!(
            code,
            "    Asset {{ name: {name:?}, content_type: {content_type:?}, bytes: include_bytes!({path:?}), gzip: {gzip} }},"
        );
    }
    code.push_str("];\n");
    Some(code)
}

fn content_type(name: &str) -> Option<&'static str> {
    Some(match name.rsplit_once('.')?.1 {
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}
