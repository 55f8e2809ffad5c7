// Records what the browser itself saw on every WebSocket (requested and negotiated subprotocol,
// close code and reason, bytes received) and every console error, before any client library
// loads. The tests read `window.labgate` to assert on what a student's browser would report.
"use strict";
window.labgate = { sockets: [], errors: [], events: [] };

(function () {
    const NativeWebSocket = window.WebSocket;
    // A plain function returning the native socket (not a subclass): noVNC 1.7 checks that the
    // socket's own prototype has the WebSocket methods.
    function RecordingWebSocket(url, protocols) {
        const socket = new NativeWebSocket(url, protocols);
        const record = {
            // Only /labs/{lab}/{vm}/{kind}: the token that follows is never recorded.
            path: new URL(url).pathname.split("/").slice(0, 5).join("/"),
            requested: protocols === undefined ? [] : [].concat(protocols),
            protocol: null,
            openedAt: null,
            bytesIn: 0,
            text: "",
            close: null,
        };
        const decoder = new TextDecoder();
        window.labgate.sockets.push(record);
        socket.addEventListener("open", () => {
            record.protocol = socket.protocol;
            record.openedAt = Date.now();
        });
        socket.addEventListener("message", (e) => {
            const bytes = typeof e.data === "string"
                ? new TextEncoder().encode(e.data) : new Uint8Array(e.data);
            record.bytesIn += bytes.length;
            if (window.labgate.keepText) {
                record.text += decoder.decode(bytes, { stream: true });
            }
        });
        socket.addEventListener("close", (e) => {
            record.close = { code: e.code, reason: e.reason, wasClean: e.wasClean, at: Date.now() };
        });
        return socket;
    }
    RecordingWebSocket.prototype = NativeWebSocket.prototype;
    for (const name of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) {
        RecordingWebSocket[name] = NativeWebSocket[name];
    }
    window.WebSocket = RecordingWebSocket;

    const nativeError = console.error.bind(console);
    console.error = (...args) => {
        window.labgate.errors.push(args.map(String).join(" "));
        nativeError(...args);
    };
})();

// Shows a line of status at the top of the page (visible in screenshots).
window.labgate.status = function (text) {
    window.labgate.events.push({ status: text, at: Date.now() });
    document.getElementById("status").textContent = text;
};

// Describes how the most recent socket closed, the way a portal page would tell the student.
window.labgate.closeText = function () {
    const last = window.labgate.sockets[window.labgate.sockets.length - 1];
    if (!last || !last.close) return "closed";
    return `closed (${last.close.code}): ${last.close.reason || "no reason given"}`;
};
