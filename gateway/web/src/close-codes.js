// What the page tells a student for every way a session can be refused or end, and whether
// connecting again can help. The one table of it in the web source; the codes are the gateway's
// (README, "Refusals and close codes"), plus the browser's own 1006 for a lost connection.
//
// `retry`:
//   "soon"   reconnect by itself, backing off from 1 s (the cause is passing: a restart, a blip);
//   "later"  reconnect by itself, backing off from 5 s (waits for something a person does, like
//            starting the VM in the portal; trying is cheap and harmless);
//   "button" never by itself: reconnecting would undo a choice (taking the VM back from another
//            window) or end the same way, so a button offers it;
//   "never"  nothing on this page can fix it (the link itself is bad or expired, access is gone).
// `action` names what the button offers when there is one ("reconnect", "screen", "console"),
// `label` its wording where the default ("Reconnect", "Open the console", …) would mislead.

export const PORTAL = "Open the lab again from your course portal to get a new link.";

export const CLOSE_CODES = {
    1000: { retry: "button", text: "The connection was closed." },
    1001: { retry: "soon", text: "The gateway is restarting. Reconnecting…" },
    1006: { retry: "soon", text: "The connection to the lab was lost. Reconnecting…" },
    4000: { retry: "never", text: "This link is not a valid lab link. " + PORTAL },
    4001: { retry: "never", text: "This link is not valid (it may be incomplete or from another site). " + PORTAL },
    4002: { retry: "never", text: "This link has expired. " + PORTAL },
    4003: { retry: "never", text: "This lab is not open to you. Check that you are signed in to the portal with your own account." },
    4005: { retry: "never", text: "This machine is not part of the lab (any more)." },
    4006: { retry: "later", text: "This machine is not running. Start it from the portal; this page connects as soon as it is up." },
    4007: { retry: "button", action: "reconnect", label: "Use it in this window", text: "You opened this machine in another window or tab, so this one was disconnected." },
    4008: { retry: "button", action: "reconnect", text: "Too many lab windows are open. Close one you no longer need, then try again." },
    4009: { retry: "never", text: "Your access to this lab was removed (the lab was deleted or given to someone else)." },
    4010: { retry: "never", text: "Your session has run out of time. " + PORTAL },
    4011: { retry: "button", action: "reconnect", text: "Disconnected after a long time without activity." },
    4012: { retry: "soon", text: "The connection to the machine failed or was lost. Reconnecting…" },
    4013: { retry: "later", text: "Someone else is viewing this machine's screen right now. This page tries again by itself." },
    4014: { retry: "button", action: "reconnect", text: "The session reached its maximum length." },
    4015: { retry: "soon", text: "The gateway is still starting up. Reconnecting…" },
    4016: { retry: "later", text: "This machine is paused. Resume it from the portal; this page connects as soon as it runs." },
    4017: { retry: "button", action: "console", text: "This machine has no screen. Use its serial console instead." },
    4018: { retry: "button", action: "screen", text: "This machine has no serial console. Use its screen instead." },
    4020: { retry: "never", text: "The lab gateway is misconfigured. Please tell your teacher or the lab's operator (this is not a problem with your machine)." },
};

const UNKNOWN = { retry: "button", action: "reconnect", text: "The connection ended unexpectedly." };

/** The entry for a close code (unknown codes offer a reconnect button). */
export function closeInfo(code) {
    return { action: "reconnect", ...(CLOSE_CODES[code] || UNKNOWN) };
}

/** Delay before reconnect attempt `attempt` (0-based), or null when it should stop trying. */
export function backoff(retry, attempt) {
    const [first, cap, attempts] = retry === "soon" ? [1000, 30000, 10] : [5000, 60000, 40];
    if (attempt >= attempts) return null;
    const delay = Math.min(cap, first * 2 ** attempt);
    // Up to 20% jitter, so a restarted gateway is not hit by every page at once.
    return Math.round(delay * (0.8 + Math.random() * 0.2));
}
