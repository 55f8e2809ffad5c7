// Loads the noVNC version named in `?lib=` (the newest, or 1.1 which asks for the `binary`
// subprotocol) and connects it to the URL the test passes to `labgate.start(url)`.
const LIBRARIES = {
    "1.7": "/node_modules/@novnc/novnc/core/rfb.js",
    "1.1": "/node_modules/novnc-1.1/core/rfb.js",
};

const lib = new URLSearchParams(location.search).get("lib") || "1.7";
const { default: RFB } = await import(LIBRARIES[lib]);
const labgate = window.labgate;
labgate.lib = lib;
labgate.connected = false;
labgate.disconnected = null;

labgate.start = function (url) {
    labgate.status(`noVNC ${lib}: connecting`);
    const rfb = new RFB(document.getElementById("screen"), url, { shared: true });
    labgate.rfb = rfb;
    rfb.addEventListener("connect", () => {
        labgate.connected = true;
        labgate.status(`noVNC ${lib}: connected`);
    });
    rfb.addEventListener("securityfailure", (e) => {
        labgate.securityFailure = { status: e.detail.status, reason: e.detail.reason || "" };
    });
    rfb.addEventListener("disconnect", (e) => {
        labgate.disconnected = { clean: e.detail.clean, at: Date.now() };
        labgate.status(`noVNC ${lib}: disconnected, ${labgate.closeText()}`);
    });
};

// The noVNC canvas (the framebuffer at 1:1 scale).
labgate.canvas = () => document.querySelector("#screen canvas");

labgate.pixels = function (points) {
    const ctx = labgate.canvas().getContext("2d");
    return points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
};

// A fingerprint of a rectangle: a hash of its pixels and how many are dark (text).
labgate.region = function ([x, y, w, h]) {
    const data = labgate.canvas().getContext("2d").getImageData(x, y, w, h).data;
    let hash = 2166136261;
    let dark = 0;
    for (let i = 0; i < data.length; i += 4) {
        for (let c = 0; c < 3; c++) hash = Math.imul(hash ^ data[i + c], 16777619) >>> 0;
        if (data[i] + data[i + 1] + data[i + 2] < 200) dark++;
    }
    return { hash, dark, total: w * h };
};

labgate.focus = () => labgate.rfb.focus();
labgate.status(`noVNC ${lib}: loaded`);
labgate.loaded = true;
