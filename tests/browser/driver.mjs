// Drives headless Chromium (Debian's, through playwright-core) for tests/tests/browser.rs.
// It serves pages/ and node_modules/ over http://127.0.0.1, trusts the test CA through a private
// NSS database, then answers one JSON command per stdin line with one JSON reply per stdout line.
//
// Usage: node driver.mjs '{"caPem": "/path/ca.pem", "chromium": "/usr/lib/chromium/chromium"}'
// (without caPem, for plain-http gateways such as the demo, Chromium trusts no extra CA).
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
const home = config.caPem
    ? homeTrustingCa(config.caPem)
    : fs.mkdtempSync(path.join(os.tmpdir(), "labgate-chromium-home-"));
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

// Reads pixels of the page's screen canvas: the test pages' (pages/vnc.js) or the viewer's.
function canvasPixels(points) {
    const canvas = window.labgate && window.labgate.canvas
        ? window.labgate.canvas() : document.querySelector("#screen canvas");
    const ctx = canvas.getContext("2d");
    return points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
}

// A fingerprint of a rectangle of the screen canvas: a hash of its pixels and how many are dark.
function canvasRegion([x, y, w, h]) {
    const canvas = window.labgate && window.labgate.canvas
        ? window.labgate.canvas() : document.querySelector("#screen canvas");
    const data = canvas.getContext("2d").getImageData(x, y, w, h).data;
    let hash = 2166136261;
    let dark = 0;
    for (let i = 0; i < data.length; i += 4) {
        for (let c = 0; c < 3; c++) hash = Math.imul(hash ^ data[i + c], 16777619) >>> 0;
        if (data[i] + data[i + 1] + data[i + 2] < 200) dark++;
    }
    return { hash, dark, total: w * h };
}

function viewerLines() {
    return Array.from(document.querySelectorAll("#console .xterm-rows > div"))
        .map((row) => row.textContent.replace(/\u00a0/g, " "));
}

// What the viewer page shows: its state attributes, the message, the address bar, the VM list.
async function viewerState(p) {
    return p.evaluate(() => {
        const d = document.body.dataset;
        const message = document.getElementById("message");
        const action = document.getElementById("message-action");
        return {
            state: d.state || null,
            closeCode: d.closeCode || null,
            vm: d.vm || null,
            kind: d.kind || null,
            message: message && !message.hidden ? document.getElementById("message-text").textContent : null,
            detail: document.getElementById("message-detail")?.textContent || null,
            action: action && !action.hidden ? action.textContent : null,
            status: document.getElementById("status")?.textContent || "",
            href: location.href,
            vms: Array.from(document.querySelectorAll("#vm-list .vm")).map((b) => ({
                name: b.dataset.vm,
                phase: b.querySelector(".vm-phase")?.dataset.phase || null,
                phaseText: b.querySelector(".vm-phase")?.textContent ?? null,
                current: b.getAttribute("aria-current") === "true",
            })),
        };
    });
}

const viewerRecords = new Map();

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
        return page(name).evaluate(canvasPixels, points);
    },

    async region({ name, rect }) {
        return page(name).evaluate(canvasRegion, rect);
    },

    // Opens the gateway's own viewer page `url` (the fragment carries the token). Records every
    // request and websocket URL the page makes (and Referer headers) for `requests`. With
    // `fallbackListing`, a gateway that does not answer `GET labs/{lab}` (400/404) is answered
    // with that JSON instead, as the lab listing would; a real listing passes through unchanged.
    async openViewer({ name, url, fallbackListing, timeoutMs = 15000 }) {
        if (pages.has(name)) throw new Error(`page ${name} already open`);
        const p = await context.newPage();
        pages.set(name, p);
        const seen = { requests: [], websockets: [], csp: [] };
        viewerRecords.set(name, seen);
        p.on("pageerror", (e) => process.stderr.write(`[${name}] page error: ${e.message}\n`));
        p.on("console", (m) => {
            if (/Content.Security.Policy|Refused to/i.test(m.text())) seen.csp.push(m.text());
        });
        p.on("request", (r) => seen.requests.push({ url: r.url(), referer: r.headers()["referer"] || null }));
        p.on("websocket", (ws) => seen.websockets.push(ws.url()));
        if (fallbackListing) {
            const listing = new URL(url);
            listing.hash = "";
            const lab = listing.pathname.split("/").pop();
            const path = listing.pathname.replace(/\/view\/[^/]+$/, `/labs/${lab}`);
            await p.route((u) => u.pathname === path, async (route) => {
                // Node trusts the test CA through NODE_EXTRA_CA_CERTS (tests/tests/browser/driver.rs).
                const response = await route.fetch().catch((e) => {
                    process.stderr.write(`[${name}] fetching the lab listing failed: ${e.code || e.name}\n`);
                    return null;
                });
                if (!response) return route.abort();
                if (response.status() === 400 || response.status() === 404) {
                    await route.fulfill({
                        status: 200,
                        contentType: "application/json",
                        headers: { "cache-control": "no-store" },
                        body: JSON.stringify(fallbackListing),
                    });
                } else {
                    await route.fulfill({ response });
                }
            });
        }
        await p.goto(url);
        await p.waitForFunction(() => document.body && document.body.dataset.state !== "loading", null, { timeout: timeoutMs });
        return viewerState(p);
    },

    async viewerState({ name }) {
        return viewerState(page(name));
    },

    // Waits until the viewer's `data-state` is `state` (and, if given, its close code and VM/kind).
    async waitViewer({ name, state, closeCode, vm, kind, timeoutMs = 15000 }) {
        const p = page(name);
        try {
            await p.waitForFunction(([s, c, v, k]) => {
                const d = document.body.dataset;
                return d.state === s && (c == null || d.closeCode === String(c))
                    && (v == null || d.vm === v) && (k == null || d.kind === k);
            }, [state, closeCode ?? null, vm ?? null, kind ?? null], { timeout: timeoutMs });
        } catch (e) {
            throw new Error(`${e.message}; the viewer is ${JSON.stringify(await viewerState(p))}`);
        }
        return viewerState(p);
    },

    async viewport({ name, width, height }) {
        await page(name).setViewportSize({ width, height });
        return null;
    },

    async fill({ name, selector, text }) {
        await page(name).fill(selector, text);
        return null;
    },

    async click({ name, selector }) {
        await page(name).click(selector);
        return null;
    },

    // The viewer's terminal lines, read from xterm.js's DOM rows.
    async viewerLines({ name }) {
        return page(name).evaluate(viewerLines);
    },

    async waitViewerLine({ name, line, timeoutMs = 10000 }) {
        const p = page(name);
        try {
            await until(`a terminal line "${line}"`, timeoutMs, async () =>
                (await p.evaluate(viewerLines)).some((x) => x.trim() === line));
        } catch (e) {
            const shown = (await p.evaluate(viewerLines)).filter((x) => x.trim());
            throw new Error(`${e.message}; the terminal shows ${JSON.stringify(shown.slice(-10))}`);
        }
        return p.evaluate(viewerLines);
    },

    // Clicks into the viewer's terminal and types `text` (then Enter).
    async typeViewer({ name, text, enter = false }) {
        const p = page(name);
        await p.click("#console .xterm-screen");
        await p.keyboard.type(text, { delay: 5 });
        if (enter) await p.keyboard.press("Enter");
        return null;
    },

    // Clicks the viewer's screen at framebuffer coordinates `at` (noVNC takes the keyboard, and
    // the X pointer moves there), then types `text` (then Enter).
    async typeScreen({ name, at, text, enter = false }) {
        const p = page(name);
        const box = await p.evaluate(() => {
            const canvas = document.querySelector("#screen canvas");
            const r = canvas.getBoundingClientRect();
            return { x: r.x, y: r.y, scale: r.width / canvas.width };
        });
        await p.mouse.click(box.x + at[0] * box.scale, box.y + at[1] * box.scale);
        await p.keyboard.type(text, { delay: 5 });
        if (enter) await p.keyboard.press("Enter");
        return null;
    },

    // What the viewer page requested: every URL (and Referer), websockets, CSP complaints.
    async requests({ name }) {
        return viewerRecords.get(name);
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
