// Drives headless Chromium (Debian's, through playwright-core) for tests/tests/browser.rs.
// It serves pages/ and node_modules/ over http://127.0.0.1, trusts the test CA through a private
// NSS database, then answers one JSON command per stdin line with one JSON reply per stdout line.
//
// Usage: node driver.mjs '{"caPem": "/path/ca.pem", "chromium": "/usr/lib/chromium/chromium"}'
// Commands: {"id": 1, "op": "open", ...}; replies: {"id": 1, "ok": true, "result": ...}.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = path.dirname(fileURLToPath(import.meta.url));
const SERVED = ["pages", "node_modules"];
const TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
};

const config = JSON.parse(process.argv[2] || "{}");

function reply(message) {
    process.stdout.write(JSON.stringify(message) + "\n");
}

// Serves files below ROOT/pages and ROOT/node_modules only.
function startStaticServer() {
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, "http://127.0.0.1");
        const file = path.normalize(path.join(ROOT, decodeURIComponent(url.pathname)));
        const allowed = SERVED.some((dir) => file.startsWith(path.join(ROOT, dir) + path.sep));
        if (!allowed || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
            res.writeHead(404).end("not found");
            return;
        }
        res.writeHead(200, {
            "content-type": TYPES[path.extname(file)] || "application/octet-stream",
            "cache-control": "no-store",
        });
        fs.createReadStream(file).pipe(res);
    });
    return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

// A HOME whose NSS database trusts the test CA: Chromium on Linux reads $HOME/.pki/nssdb.
function homeTrustingCa(caPem) {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), "labgate-chromium-home-"));
    const db = path.join(home, ".pki", "nssdb");
    fs.mkdirSync(db, { recursive: true });
    try {
        execFileSync("certutil", ["-N", "-d", `sql:${db}`, "--empty-password"]);
        execFileSync("certutil", ["-A", "-d", `sql:${db}`, "-t", "C,,", "-n", "labgate-test-ca", "-i", caPem]);
    } catch (e) {
        if (e.code === "ENOENT") {
            throw new Error("`certutil` is not installed: apt-get install libnss3-tools");
        }
        throw e;
    }
    return home;
}

async function loadPlaywright() {
    try {
        return await import("playwright-core");
    } catch (e) {
        throw new Error(`playwright-core is missing: run \`npm ci\` in ${ROOT} (${e.message})`);
    }
}

async function until(what, timeoutMs, check) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 25));
    }
}

const { chromium } = await loadPlaywright();
const server = await startStaticServer();
const base = `http://127.0.0.1:${server.address().port}`;
const home = homeTrustingCa(config.caPem);
const browser = await chromium.launch({
    executablePath: config.chromium,
    env: { ...process.env, HOME: home },
    args: ["--disable-gpu", "--use-gl=swiftshader", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 820, height: 640 } });
const pages = new Map();

function page(name) {
    const p = pages.get(name);
    if (!p) throw new Error(`no page named ${name}`);
    return p;
}

// What the page knows about its connection (see pages/record.js), without received text.
async function state(p) {
    return p.evaluate(() => {
        const l = window.labgate;
        return {
            connected: l.connected,
            disconnected: l.disconnected ?? null,
            securityFailure: l.securityFailure ?? null,
            closeEvent: l.closeEvent ?? null,
            errors: l.errors,
            status: document.getElementById("status").textContent,
            sockets: l.sockets.map(({ text, ...rest }) => rest),
        };
    });
}

const ops = {
    // Opens pages/{kind}.html (`lib` picks the noVNC version), connects it to `url` and waits
    // until the connection is up or has ended.
    async open({ name, kind, lib, url, timeoutMs = 10000 }) {
        if (pages.has(name)) throw new Error(`page ${name} already open`);
        const p = await context.newPage();
        pages.set(name, p);
        p.on("pageerror", (e) => process.stderr.write(`[${name}] page error: ${e.message}\n`));
        const query = lib ? `?lib=${encodeURIComponent(lib)}` : "";
        await p.goto(`${base}/pages/${kind}.html${query}`);
        await p.waitForFunction(() => window.labgate && window.labgate.loaded, null, { timeout: timeoutMs });
        await p.evaluate((u) => window.labgate.start(u), url);
        await p.waitForFunction(() => {
            const l = window.labgate;
            const last = l.sockets[l.sockets.length - 1];
            return l.connected || l.disconnected || (last && last.close);
        }, null, { timeout: timeoutMs });
        return state(p);
    },

    async state({ name }) {
        return state(page(name));
    },

    // Waits until the page's last socket has closed and (for noVNC) the client reported it.
    async waitClosed({ name, timeoutMs = 5000 }) {
        const p = page(name);
        await p.waitForFunction(() => {
            const l = window.labgate;
            const last = l.sockets[l.sockets.length - 1];
            const clientSaw = l.lib ? l.disconnected : l.closeEvent;
            return last && last.close && clientSaw;
        }, null, { timeout: timeoutMs });
        return state(p);
    },

    async pixels({ name, points }) {
        return page(name).evaluate((pts) => window.labgate.pixels(pts), points);
    },

    async region({ name, rect }) {
        return page(name).evaluate((r) => window.labgate.region(r), rect);
    },

    // Focuses the client, optionally moves the mouse to canvas coordinates `at` (so the X
    // pointer, and with it the keyboard focus, is over a window), then types `text` as keys.
    async type({ name, text, at, enter = false }) {
        const p = page(name);
        await p.evaluate(() => window.labgate.focus());
        if (at) {
            const box = await p.evaluate(() => {
                const r = window.labgate.canvas().getBoundingClientRect();
                return { x: r.x, y: r.y };
            });
            await p.mouse.move(box.x + at[0], box.y + at[1], { steps: 4 });
        }
        await p.keyboard.type(text, { delay: 5 });
        if (enter) await p.keyboard.press("Enter");
        return null;
    },

    // The xterm.js buffer lines.
    async lines({ name }) {
        return page(name).evaluate(() => window.labgate.lines());
    },

    // Waits until some terminal line, trimmed, equals `line`; returns the lines.
    async waitLine({ name, line, timeoutMs = 10000 }) {
        const p = page(name);
        try {
            await until(`a terminal line "${line}"`, timeoutMs, () =>
                p.evaluate((l) => window.labgate.lines().some((x) => x.trim() === l), line));
        } catch (e) {
            const shown = await p.evaluate(() => window.labgate.lines().filter((x) => x.trim()));
            throw new Error(`${e.message}; the terminal shows ${JSON.stringify(shown.slice(-10))}`);
        }
        return p.evaluate(() => window.labgate.lines());
    },

    // Everything the console socket received so far, decoded as UTF-8.
    async received({ name }) {
        return page(name).evaluate(() => window.labgate.sockets.map((s) => s.text).join(""));
    },

    // Waits until the received text contains `needle`.
    async waitReceived({ name, needle, timeoutMs = 20000 }) {
        const p = page(name);
        await until(`"${needle}" in the received bytes`, timeoutMs, () =>
            p.evaluate((n) => window.labgate.sockets.some((s) => s.text.includes(n)), needle));
        return null;
    },

    async screenshot({ name, file }) {
        fs.mkdirSync(path.dirname(file), { recursive: true });
        await page(name).screenshot({ path: file });
        return file;
    },

    // Screenshots of every open page as `${prefix}-${page}.png` (for failure diagnosis).
    async screenshotAll({ dir, prefix }) {
        fs.mkdirSync(dir, { recursive: true });
        const files = [];
        for (const [name, p] of pages) {
            const file = path.join(dir, `${prefix}-${name}.png`);
            try {
                await p.screenshot({ path: file });
                files.push(file);
            } catch (e) {
                process.stderr.write(`screenshot of ${name} failed: ${e.message}\n`);
            }
        }
        return files;
    },

    async close({ name }) {
        await page(name).close();
        pages.delete(name);
        return null;
    },
};

async function shutdown() {
    await browser.close().catch(() => {});
    server.close();
    fs.rmSync(home, { recursive: true, force: true });
}

reply({ ready: true, base });
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
    if (!line.trim()) continue;
    let message;
    try {
        message = JSON.parse(line);
    } catch (e) {
        reply({ id: null, ok: false, error: `bad command line: ${e.message}` });
        continue;
    }
    if (message.op === "quit") break;
    const op = ops[message.op];
    try {
        if (!op) throw new Error(`unknown op ${message.op}`);
        reply({ id: message.id, ok: true, result: await op(message) });
    } catch (e) {
        reply({ id: message.id, ok: false, error: String(e && e.stack ? e.stack : e) });
    }
}
await shutdown();
