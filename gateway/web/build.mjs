// Bundles the viewer into dist/: dist/index.html (a template the gateway fills with a per-response
// style nonce) and dist/assets/{name}.{hash}.{ext}, content-hashed so they can be cached forever.
// Run through scripts/build-viewer.sh (npm ci first).

import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const ROOT = path.dirname(fileURLToPath(import.meta.url));
const FINAL = path.join(ROOT, "dist");
// Built beside dist/ and swapped in only when something changed, so that an unchanged bundle
// leaves dist/ untouched and cargo does not rebuild the gateway for nothing.
const DIST = path.join(ROOT, "dist.new");
const ASSETS = path.join(DIST, "assets");

fs.rmSync(DIST, { recursive: true, force: true });
const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: { viewer: "src/main.js" },
    bundle: true,
    format: "esm",
    // noVNC awaits at its module's top level (WebCodecs probing).
    target: ["es2022"],
    minify: true,
    sourcemap: false,
    legalComments: "eof",
    outdir: ASSETS,
    entryNames: "[name].[hash]",
    assetNames: "[name].[hash]",
    chunkNames: "[name].[hash]",
    metafile: true,
    logLevel: "warning",
});

const outputs = Object.entries(result.metafile.outputs).filter(([, o]) => o.entryPoint);
const [jsPath, js] = outputs.find(([file]) => file.endsWith(".js"));
const base = (file) => path.basename(file);
const template = fs.readFileSync(path.join(ROOT, "index.html"), "utf8");
const html = template
    .replace("{{js}}", base(jsPath))
    .replace("{{css}}", base(js.cssBundle));
if (html.includes("{{js}}") || html.includes("{{css}}")) throw new Error("index.html placeholders left");
fs.writeFileSync(path.join(DIST, "index.html"), html);

// Gzipped copies, which the gateway sends to browsers that accept gzip (all of them).
for (const file of fs.readdirSync(ASSETS)) {
    const raw = fs.readFileSync(path.join(ASSETS, file));
    const gzipped = zlib.gzipSync(raw, { level: 9 });
    fs.writeFileSync(path.join(ASSETS, `${file}.gz`), gzipped);
    const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
    console.log(`assets/${file}  ${kib(raw.length)} (gzip ${kib(gzipped.length)})`);
}

function files(dir) {
    if (!fs.existsSync(dir)) return null;
    return fs.readdirSync(dir, { recursive: true })
        .filter((f) => fs.statSync(path.join(dir, f)).isFile())
        .sort()
        .map((f) => [f, fs.readFileSync(path.join(dir, f))]);
}

const built = files(DIST);
const current = files(FINAL);
const same = current && current.length === built.length
    && current.every(([f, bytes], i) => f === built[i][0] && bytes.equals(built[i][1]));
if (same) {
    fs.rmSync(DIST, { recursive: true, force: true });
    console.log("dist/ is up to date");
} else {
    fs.rmSync(FINAL, { recursive: true, force: true });
    fs.renameSync(DIST, FINAL);
    console.log("dist/ updated");
}
