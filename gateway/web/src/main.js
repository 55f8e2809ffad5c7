// The viewer page for one lab: the lab's VMs, each VM's screen (noVNC) and serial console
// (xterm.js), and a sentence for every way a session ends.
//
// The token arrives in the URL fragment (`#token=…&vm=…&kind=vnc|console`), which browsers never
// send to a server. It leaves the address bar at once and goes only into the `Authorization`
// header of the lab listing and the bearer subprotocol of the websockets: never into a URL.
// Every URL here is relative to the page (`../labs/…`), so a prefix in front of the gateway works.

import RFB from "@novnc/novnc";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { AttachAddon } from "@xterm/addon-attach";
import "@xterm/xterm/css/xterm.css";
import "./style.css";
import { PORTAL, backoff, closeInfo } from "./close-codes.js";
import { allowStyleElements } from "./csp.js";

allowStyleElements();

const $ = (id) => document.getElementById(id);
const PHASES = {
    Running: "running",
    Paused: "paused",
    Stopped: "stopped",
    Pending: "starting",
    Scheduling: "starting",
    Scheduled: "starting",
    Failed: "failed",
    Succeeded: "shut down",
    // Not "Unknown": a gateway that cannot see the VM's state (VMs outside Kubernetes, a node out
    // of touch) says nothing rather than alarm a student; opening the VM tells the real story.
};
const KIND_NAMES = { vnc: "screen", console: "console" };
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const LISTING_REFRESH_MS = 30000;

const state = {
    lab: "",
    token: "",
    vms: [], // {name, phase, screen, console}
    listed: false, // whether the gateway gave us the list
    vm: null,
    kind: "vnc",
    session: null,
    attempt: 0,
    timer: null,
    fit: true,
};

// --- start-up ---------------------------------------------------------------------------

function readLink() {
    const lab = decodeURIComponent(location.pathname.split("/").pop() || "");
    const fragment = new URLSearchParams(location.hash.slice(1));
    const key = `labgate-token:${lab}`;
    let token = fragment.get("token") || "";
    if (fragment.has("token")) {
        // Out of the address bar (and history, bookmarks, screen shares) at once.
        history.replaceState(null, "", location.pathname + location.search);
        try {
            sessionStorage.setItem(key, token);
        } catch {
            // Storage disabled: a reload will need the portal's link again.
        }
    } else {
        try {
            token = sessionStorage.getItem(key) || "";
        } catch {
            token = "";
        }
    }
    const vm = fragment.get("vm");
    const kind = fragment.get("kind");
    return {
        lab,
        token,
        vm: vm && DNS_LABEL.test(vm) ? vm : null,
        kind: kind === "console" ? "console" : "vnc",
    };
}

async function main() {
    const link = readLink();
    state.lab = link.lab;
    state.token = link.token;
    state.kind = link.kind;
    $("lab-name").textContent = state.lab;
    document.title = `${state.lab} · lab`;
    wireControls();
    if (!DNS_LABEL.test(state.lab)) {
        return ended({ retry: "never", text: "This address names no lab. " + PORTAL }, null);
    }
    if (!state.token || bearerProtocol(state.token) === null) {
        return ended({ retry: "never", text: "This page needs the link from your course portal, which carries your access. " + PORTAL }, null);
    }
    const listing = await loadListing();
    if (listing.refused) {
        return ended(closeInfo(listing.refused), { code: listing.refused, reason: listing.reason });
    }
    applyListing(listing.vms, link.vm);
    if (!state.vm) {
        return ended({ retry: "never", text: "There is no machine in this lab that you can open." }, null);
    }
    connect();
    setInterval(refreshListing, LISTING_REFRESH_MS);
}

// --- the lab listing (GET labs/{lab}) ---------------------------------------------------

// Refusals of the listing that no websocket would get past either: shown at once.
const FINAL_LISTING_CODES = new Set([4001, 4002, 4003, 4009, 4010, 4020]);

async function loadListing() {
    try {
        const res = await fetch(`../labs/${encodeURIComponent(state.lab)}`, {
            headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
            cache: "no-store",
            credentials: "omit",
            referrerPolicy: "no-referrer",
        });
        const body = await res.json().catch(() => null);
        if (res.ok && body && Array.isArray(body.vms)) {
            return { vms: body.vms.filter((vm) => vm && DNS_LABEL.test(vm.name)) };
        }
        if (body && FINAL_LISTING_CODES.has(body.closeCode)) {
            return { refused: body.closeCode, reason: body.reason || "" };
        }
    } catch {
        // Unreachable or not JSON: the websocket will say more.
    }
    // No listing from this gateway: the VM the link names is all we know.
    return { vms: null };
}

function applyListing(vms, wanted) {
    if (vms) {
        state.listed = true;
        state.vms = vms.map((vm) => ({
            name: vm.name,
            phase: vm.phase || null,
            screen: vm.screen !== false,
            console: vm.console !== false,
        }));
    } else if (wanted && !state.vms.length) {
        state.vms = [{ name: wanted, phase: null, screen: true, console: true }];
    }
    if (!state.vm) {
        const named = state.vms.find((vm) => vm.name === wanted);
        const running = state.vms.find((vm) => vm.phase === "Running");
        state.vm = (named || running || state.vms[0] || {}).name || null;
    }
    const vm = currentVm();
    if (vm && !supports(vm, state.kind)) state.kind = state.kind === "vnc" ? "console" : "vnc";
    renderVms();
}

async function refreshListing() {
    if (!state.listed || document.hidden) return;
    const listing = await loadListing();
    if (listing.vms) applyListing(listing.vms, null);
}

function currentVm() {
    return state.vms.find((vm) => vm.name === state.vm) || null;
}

function supports(vm, kind) {
    return kind === "vnc" ? vm.screen : vm.console;
}

function renderVms() {
    const list = $("vm-list");
    list.replaceChildren();
    for (const vm of state.vms) {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "vm";
        button.dataset.vm = vm.name;
        if (vm.name === state.vm) button.setAttribute("aria-current", "true");
        const name = document.createElement("span");
        name.className = "vm-name";
        name.textContent = vm.name;
        const phase = document.createElement("span");
        phase.className = "vm-phase";
        phase.dataset.phase = vm.phase || "";
        // Phases without a word of their own (Unknown, anything new) show no badge.
        phase.textContent = PHASES[vm.phase] || "";
        button.append(name, phase);
        button.addEventListener("click", () => selectVm(vm.name));
        item.append(button);
        list.append(item);
    }
    const vm = currentVm();
    for (const kind of ["vnc", "console"]) {
        const tab = $(`tab-${kind}`);
        tab.setAttribute("aria-selected", String(state.kind === kind));
        tab.disabled = !vm || !supports(vm, kind);
    }
    document.body.dataset.vm = state.vm || "";
    document.body.dataset.kind = state.kind;
    $("screen").hidden = state.kind !== "vnc";
    $("console").hidden = state.kind !== "console";
    for (const id of ["btn-cad", "btn-fit"]) $(id).hidden = state.kind !== "vnc";
}

function selectVm(name) {
    if (name === state.vm && state.session && !state.session.ended) return;
    state.vm = name;
    const vm = currentVm();
    if (vm && !supports(vm, state.kind)) state.kind = state.kind === "vnc" ? "console" : "vnc";
    state.attempt = 0;
    connect();
}

function selectKind(kind) {
    if (kind === state.kind && state.session && !state.session.ended) return;
    state.kind = kind;
    state.attempt = 0;
    connect();
}

// --- sessions -----------------------------------------------------------------------------

/** `base64url.bearer.authorization.k8s.io.<token, base64url without padding>`, or null. */
function bearerProtocol(token) {
    try {
        const b64 = btoa(token).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
        return `base64url.bearer.authorization.k8s.io.${b64}`;
    } catch {
        return null; // not Latin-1: no valid token
    }
}

function socketUrl(vm, kind) {
    const url = new URL(`../labs/${state.lab}/${vm}/${kind}`, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    url.search = "";
    return url.href;
}

function connect() {
    clearTimeout(state.timer);
    endSession();
    renderVms();
    const { vm, kind } = state;
    const ws = new WebSocket(socketUrl(vm, kind), [bearerProtocol(state.token), "binary"]);
    ws.binaryType = "arraybuffer";
    const session = { vm, kind, ws, ended: false, rfb: null, term: null, fit: null };
    state.session = session;
    setStatus("connecting", `Connecting to the ${KIND_NAMES[kind]} of ${vm}…`);
    ws.addEventListener("close", (e) => onClose(session, e));
    ws.addEventListener("open", () => announce(session), { once: true });
    if (kind === "vnc") {
        // noVNC takes the socket we opened, so its close code and reason stay ours to read.
        $("screen").replaceChildren();
        const rfb = new RFB($("screen"), ws, { shared: true });
        rfb.scaleViewport = state.fit;
        rfb.resizeSession = false;
        rfb.showDotCursor = true;
        rfb.background = "#1c2127";
        rfb.addEventListener("connect", () => {
            state.attempt = 0;
            setStatus("connected", "");
            rfb.focus();
        });
        rfb.addEventListener("securityfailure", (e) => {
            session.securityFailure = e.detail.reason || `status ${e.detail.status}`;
        });
        session.rfb = rfb;
    } else {
        const term = new Terminal({
            cursorBlink: true,
            scrollback: 5000,
            fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
            fontSize: 15,
            theme: { background: "#1c2127" },
        });
        const fit = new FitAddon();
        term.loadAddon(fit);
        $("console").replaceChildren();
        term.open($("console"));
        fit.fit();
        term.loadAddon(new AttachAddon(ws));
        ws.addEventListener("open", () => setStatus("connected", ""));
        // A refused session opens and closes at once: only bytes from the VM mean it is up.
        ws.addEventListener("message", () => { state.attempt = 0; }, { once: true });
        term.focus();
        session.term = term;
        session.fit = fit;
    }
}

/** Ends the current session on purpose (switching, reconnecting): no message for it. */
function endSession() {
    const session = state.session;
    if (!session) return;
    state.session = null;
    const wasEnded = session.ended;
    session.ended = true;
    if (session.rfb && !wasEnded) session.rfb.disconnect();
    else if (session.ws.readyState <= WebSocket.OPEN) session.ws.close(1000);
    if (session.term) session.term.dispose();
    $("console").replaceChildren();
}

function onClose(session, event) {
    if (session.ended || session !== state.session) return;
    session.ended = true;
    // 1005 is "no code given": the same as a plain close.
    const code = event.code === 1005 ? 1000 : event.code;
    // A lost VM connection right after another tab opened the same VM: that tab took it.
    const takenByTab = session.takenByTab && (code === 4012 || code === 1006);
    let info = closeInfo(takenByTab ? 4007 : code);
    // Now known, whatever the listing said (or when there was none): the tab is disabled.
    const vm = state.vms.find((v) => v.name === session.vm);
    if (vm && code === 4017) vm.screen = false;
    if (vm && code === 4018) vm.console = false;
    if (code === 4017 || code === 4018) renderVms();
    if (session.securityFailure && code === 1000) {
        info = { retry: "button", action: "reconnect", text: "The machine's screen refused the connection." };
    }
    ended(info, { code, reason: event.reason || session.securityFailure || "" });
    if (session.term) session.term.blur();
    refreshListing();
}

// --- other tabs --------------------------------------------------------------------------

// Tabs of this browser announce which VM screen or console they open. When one replica serves
// both tabs the gateway reports a takeover itself (4007); through two replicas the first tab
// only sees its VM connection drop (4012), and this tells it that a tab of its own took it.
const tabs = "BroadcastChannel" in window ? new BroadcastChannel("labgate-viewer") : null;

function announce(session) {
    if (tabs) tabs.postMessage({ lab: state.lab, vm: session.vm, kind: session.kind });
}

if (tabs) {
    tabs.onmessage = (event) => {
        const { lab, vm, kind } = event.data || {};
        const session = state.session;
        if (session && lab === state.lab && vm === session.vm && kind === session.kind) {
            session.takenByTab = true;
        }
    };
}

// --- messages and reconnecting ------------------------------------------------------------

function setStatus(status, text) {
    document.body.dataset.state = status;
    if (status === "connected" || status === "connecting") delete document.body.dataset.closeCode;
    $("status").textContent = text;
    $("message").hidden = status === "connected" || status === "connecting";
}

/** Shows why the session ended and what happens next: a retry, a button, or nothing. */
function ended(info, close) {
    clearTimeout(state.timer);
    document.body.dataset.state = "ended";
    if (close) document.body.dataset.closeCode = String(close.code);
    $("status").textContent = "";
    $("message-text").textContent = info.text;
    $("message-detail").textContent = close
        ? `Code ${close.code}${close.reason ? `: ${close.reason}` : ""}`
        : "";
    $("message").hidden = false;
    const button = $("message-action");
    button.hidden = true;
    if (info.retry === "soon" || info.retry === "later") {
        const delay = backoff(info.retry, state.attempt);
        if (delay !== null) {
            state.attempt += 1;
            document.body.dataset.state = "retrying";
            showAction("Reconnect now", connect);
            countdown(Date.now() + delay);
            state.timer = setTimeout(connect, delay);
            return;
        }
        showAction("Try again", connect);
    } else if (info.retry === "button") {
        const labels = { reconnect: "Reconnect", console: "Open the console", screen: "Open the screen" };
        const run = info.action === "console" ? () => selectKind("console")
            : info.action === "screen" ? () => selectKind("vnc")
            : () => { state.attempt = 0; connect(); };
        showAction(info.label || labels[info.action] || "Reconnect", run);
    }
}

function showAction(label, run) {
    const button = $("message-action");
    button.textContent = label;
    button.onclick = run;
    button.hidden = false;
}

function countdown(at) {
    const tick = () => {
        if (document.body.dataset.state !== "retrying") return;
        const seconds = Math.max(0, Math.ceil((at - Date.now()) / 1000));
        $("status").textContent = `Trying again in ${seconds} s.`;
        if (seconds > 0) setTimeout(tick, 500);
    };
    tick();
}

// --- controls -----------------------------------------------------------------------------

function wireControls() {
    $("tab-vnc").addEventListener("click", () => selectKind("vnc"));
    $("tab-console").addEventListener("click", () => selectKind("console"));
    $("btn-fit").setAttribute("aria-pressed", String(state.fit));
    $("btn-fit").addEventListener("click", () => {
        state.fit = !state.fit;
        $("btn-fit").setAttribute("aria-pressed", String(state.fit));
        if (state.session && state.session.rfb) state.session.rfb.scaleViewport = state.fit;
    });
    $("btn-cad").addEventListener("click", () => {
        if (state.session && state.session.rfb) state.session.rfb.sendCtrlAltDel();
    });
    $("btn-fullscreen").addEventListener("click", () => {
        if (document.fullscreenElement) document.exitFullscreen();
        else $("stage").requestFullscreen().catch(() => {});
    });
    document.addEventListener("fullscreenchange", () => {
        $("btn-fullscreen").setAttribute("aria-pressed", String(Boolean(document.fullscreenElement)));
    });
    $("btn-paste").addEventListener("click", openPaste);
    $("paste-cancel").addEventListener("click", closePaste);
    $("paste-form").addEventListener("submit", (e) => {
        e.preventDefault();
        sendPaste($("paste-text").value);
        closePaste();
    });
    // The terminal follows the stage's size (window, full screen, phone rotation).
    new ResizeObserver(() => {
        const session = state.session;
        if (session && session.fit && !session.ended) session.fit.fit();
    }).observe($("stage"));
}

async function openPaste() {
    $("paste-form").hidden = false;
    const area = $("paste-text");
    area.value = "";
    area.focus();
    // Prefill from the clipboard where the browser allows it; typing or pasting here always works.
    try {
        if (navigator.clipboard && navigator.clipboard.readText) {
            const text = await navigator.clipboard.readText();
            // Only into an untouched box: the answer may come after the student typed.
            if (!area.value && !$("paste-form").hidden) area.value = text;
        }
    } catch {
        // Permission refused: the student pastes into the box.
    }
}

function closePaste() {
    $("paste-form").hidden = true;
    const session = state.session;
    if (session && session.term) session.term.focus();
    else if (session && session.rfb) session.rfb.focus();
}

function sendPaste(text) {
    const session = state.session;
    if (!text || !session || session.ended) return;
    if (session.term) {
        // As if pasted into the terminal: newlines become Enter, bracketed paste if the shell asked.
        session.term.paste(text);
    } else if (session.rfb) {
        // The VM's clipboard; the student pastes there with the desktop's own shortcut.
        session.rfb.clipboardPasteFrom(text);
    }
}

main();
