// xterm.js with the stock attach addon (keystrokes go out as text frames) on a WebSocket to
// the URL the test passes to `labgate.start(url)`; a close is written into the terminal.
import { Terminal } from "/node_modules/@xterm/xterm/lib/xterm.mjs";
import { AttachAddon } from "/node_modules/@xterm/addon-attach/lib/addon-attach.mjs";

const labgate = window.labgate;
// Every byte received is kept so the test can check large outputs arrived complete.
labgate.keepText = true;
labgate.connected = false;
const term = new Terminal({ cols: 100, rows: 30, scrollback: 5000 });
term.open(document.getElementById("terminal"));
labgate.term = term;

labgate.start = function (url) {
    labgate.status("xterm.js: connecting");
    const socket = new WebSocket(url);
    labgate.socket = socket;
    term.loadAddon(new AttachAddon(socket));
    socket.addEventListener("open", () => {
        labgate.connected = true;
        labgate.status("xterm.js: connected");
    });
    socket.addEventListener("close", (e) => {
        labgate.closeEvent = { code: e.code, reason: e.reason, at: Date.now() };
        const text = labgate.closeText();
        term.write(`\r\n\x1b[31m[${text}]\x1b[0m\r\n`);
        labgate.status(`xterm.js: ${text}`);
    });
};

// The terminal's lines (scrollback and screen), trailing blanks trimmed.
labgate.lines = function () {
    const buffer = term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) {
        lines.push(buffer.getLine(i).translateToString(true));
    }
    return lines;
};

labgate.focus = () => term.focus();
labgate.status("xterm.js: loaded");
labgate.loaded = true;
