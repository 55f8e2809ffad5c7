//! Why a session was refused or ended, and how each reason is shown to clients.
//!
//! A browser's WebSocket API hides the HTTP status of a failed handshake, so a
//! websocket client gets the handshake completed and then an immediate close
//! frame carrying an application close code (4000-4999) and a short reason.
//! A plain HTTP client gets the matching HTTP status and a JSON body. The
//! table lives here, in one place, and is documented in the README.

use http::StatusCode;

/// Every reason labgate refuses or ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The path is not `/labs/{namespace}/{vmi}/{vnc|console}` with valid names.
    BadRequest,
    /// No token, or the token failed verification (signature, algorithm, issuer, audience, format).
    BadToken,
    /// The token's `exp` has passed (at connect time).
    TokenExpired,
    /// The token is valid but no lab of this name admits its user: the lab
    /// is missing or malformed, belongs to someone else, or a scope claim
    /// excludes it. One answer, so names of other users' labs do not leak.
    NotYours,
    /// The lab has no VirtualMachineInstance of that name.
    NoSuchVm,
    /// The VM exists but is not running (stopped, starting, failed).
    VmNotRunning,
    /// Another viewer opened the same VM's screen or console, which closes this one (KubeVirt allows one).
    TakenOver,
    /// Someone else holds the VM's screen and the gateway was asked not to take it over.
    VmBusy,
    /// The global or per-user session limit is reached.
    LimitReached,
    /// The lab was deleted, un-labelled or changed owner while the session ran.
    Revoked,
    /// The token expired while the session ran.
    SessionExpired,
    /// The session reached its configured maximum duration.
    MaxDuration,
    /// Nothing was sent either way for the configured idle time.
    Idle,
    /// The upstream (API server / KubeVirt) failed or dropped the connection.
    UpstreamError,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The lab list is not loaded yet, or too old to decide on (the namespace watch keeps failing).
    NotReady,
    /// The VM is paused (KubeVirt: "VMI is paused").
    VmPaused,
    /// The VM has no graphics device (KubeVirt: "No graphics devices are present.").
    NoDisplay,
    /// The VM has no serial console (KubeVirt: "No serial consoles are present.").
    NoSerialConsole,
    /// The API server refused the gateway's own credentials (401) or permissions (403): a
    /// misconfiguration of the gateway, not a problem of the VM.
    GatewayUnauthorized,
}

impl Refusal {
    /// Websocket close code sent to the client.
    pub fn close_code(self) -> u16 {
        match self {
            Refusal::BadRequest => 4000,
            Refusal::BadToken => 4001,
            Refusal::TokenExpired => 4002,
            Refusal::NotYours => 4003,
            Refusal::NoSuchVm => 4005,
            Refusal::VmNotRunning => 4006,
            Refusal::TakenOver => 4007,
            Refusal::LimitReached => 4008,
            Refusal::Revoked => 4009,
            Refusal::SessionExpired => 4010,
            Refusal::Idle => 4011,
            Refusal::UpstreamError => 4012,
            Refusal::VmBusy => 4013,
            Refusal::MaxDuration => 4014,
            Refusal::NotReady => 4015,
            Refusal::VmPaused => 4016,
            Refusal::NoDisplay => 4017,
            Refusal::NoSerialConsole => 4018,
            Refusal::GatewayUnauthorized => 4020,
            // RFC 6455 "going away": the server is shutting down.
            Refusal::ShuttingDown => 1001,
        }
    }

    /// Human-readable reason (kept under the 123-byte close-reason limit).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad request: expected /labs/{namespace}/{vm}/{vnc|console}",
            Refusal::BadToken => "bad token: missing, malformed or not signed by a trusted key",
            Refusal::TokenExpired => "token expired: ask the portal for a new link",
            Refusal::NotYours => "not yours: no lab of this name is open to you",
            Refusal::NoSuchVm => "no such VM in this lab",
            Refusal::VmNotRunning => "VM not running: start it from the portal",
            Refusal::VmPaused => "VM paused: resume it from the portal",
            Refusal::NoDisplay => "VM has no screen: open its serial console instead",
            Refusal::NoSerialConsole => "VM has no serial console: open its screen instead",
            Refusal::TakenOver => "taken over: the VM was opened in another window",
            Refusal::VmBusy => "VM busy: someone else is viewing this screen",
            Refusal::LimitReached => "limit reached: too many open sessions",
            Refusal::Revoked => "access revoked: the lab was deleted or reassigned",
            Refusal::SessionExpired => {
                "session expired: the token ran out, reconnect with a new link"
            }
            Refusal::MaxDuration => "session ended: maximum session duration reached",
            Refusal::Idle => "session ended: idle for too long",
            Refusal::UpstreamError => "VM connection failed or was lost",
            Refusal::ShuttingDown => "gateway going away: reconnect",
            Refusal::NotReady => {
                "gateway not ready: lab list not loaded or out of date, retry in a few seconds"
            }
            Refusal::GatewayUnauthorized => {
                "gateway not authorised by the API server: tell the operator (not a VM problem)"
            }
        }
    }

    /// HTTP status for a plain (non-websocket) request.
    pub fn http_status(self) -> StatusCode {
        match self {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::BadToken | Refusal::TokenExpired | Refusal::SessionExpired => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::NotYours | Refusal::Revoked => StatusCode::FORBIDDEN,
            Refusal::NoSuchVm => StatusCode::NOT_FOUND,
            Refusal::VmNotRunning
            | Refusal::VmPaused
            | Refusal::NoDisplay
            | Refusal::NoSerialConsole
            | Refusal::TakenOver
            | Refusal::VmBusy => StatusCode::CONFLICT,
            Refusal::LimitReached => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Idle | Refusal::MaxDuration => StatusCode::REQUEST_TIMEOUT,
            Refusal::UpstreamError | Refusal::GatewayUnauthorized => StatusCode::BAD_GATEWAY,
            Refusal::ShuttingDown | Refusal::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Short machine-readable name, used in JSON bodies.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::BadToken => "bad_token",
            Refusal::TokenExpired => "token_expired",
            Refusal::NotYours => "not_yours",
            Refusal::NoSuchVm => "no_such_vm",
            Refusal::VmNotRunning => "vm_not_running",
            Refusal::TakenOver => "taken_over",
            Refusal::VmBusy => "vm_busy",
            Refusal::LimitReached => "limit_reached",
            Refusal::Revoked => "revoked",
            Refusal::SessionExpired => "session_expired",
            Refusal::MaxDuration => "max_duration",
            Refusal::Idle => "idle",
            Refusal::UpstreamError => "upstream_error",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::NotReady => "not_ready",
            Refusal::VmPaused => "vm_paused",
            Refusal::NoDisplay => "no_display",
            Refusal::NoSerialConsole => "no_serial_console",
            Refusal::GatewayUnauthorized => "gateway_unauthorized",
        }
    }

    /// The `outcome` label of `labgate_gateway_sessions_total` (a small, fixed set).
    pub fn outcome(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::BadToken => "bad_token",
            Refusal::TokenExpired | Refusal::SessionExpired | Refusal::MaxDuration => "expired",
            Refusal::NotYours => "forbidden",
            Refusal::NoSuchVm
            | Refusal::VmNotRunning
            | Refusal::VmPaused
            | Refusal::NoDisplay
            | Refusal::NoSerialConsole => "not_found",
            Refusal::TakenOver => "taken_over",
            Refusal::VmBusy | Refusal::UpstreamError => "upstream_error",
            Refusal::LimitReached => "limit",
            Refusal::Revoked => "revoked",
            Refusal::Idle => "idle",
            Refusal::ShuttingDown => "shutdown",
            Refusal::NotReady => "not_ready",
            Refusal::GatewayUnauthorized => "gateway_unauthorized",
        }
    }

    /// JSON body for plain HTTP refusals.
    pub fn json_body(self) -> String {
        serde_json::json!({
            "error": self.name(),
            "reason": self.reason(),
            "closeCode": self.close_code(),
        })
        .to_string()
    }

    /// All reasons, for documentation and tests.
    pub const ALL: [Refusal; 20] = [
        Refusal::BadRequest,
        Refusal::BadToken,
        Refusal::TokenExpired,
        Refusal::NotYours,
        Refusal::NoSuchVm,
        Refusal::VmNotRunning,
        Refusal::TakenOver,
        Refusal::VmBusy,
        Refusal::LimitReached,
        Refusal::Revoked,
        Refusal::SessionExpired,
        Refusal::MaxDuration,
        Refusal::Idle,
        Refusal::UpstreamError,
        Refusal::ShuttingDown,
        Refusal::NotReady,
        Refusal::VmPaused,
        Refusal::NoDisplay,
        Refusal::NoSerialConsole,
        Refusal::GatewayUnauthorized,
    ];
}

impl Refusal {
    /// The refusal for KubeVirt's answer that a VM cannot be opened now
    /// (a 400 or 409 `Status` from virt-api; messages from
    /// pkg/virt-api/rest/subresource.go). Unknown messages mean "not running".
    pub fn from_kubevirt_message(message: &str) -> Refusal {
        if message.contains("VMI is paused") {
            Refusal::VmPaused
        } else if message.contains("No graphics devices are present") {
            Refusal::NoDisplay
        } else if message.contains("No serial consoles are present") {
            Refusal::NoSerialConsole
        } else {
            Refusal::VmNotRunning
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn close_codes_are_distinct_and_reasons_fit_a_close_frame() {
        let codes: HashSet<_> = Refusal::ALL.iter().map(|r| r.close_code()).collect();
        assert_eq!(codes.len(), Refusal::ALL.len());
        for r in Refusal::ALL {
            assert!(r.reason().len() <= 123, "{r:?} reason too long");
            let code = r.close_code();
            assert!(code == 1001 || (4000..5000).contains(&code));
        }
    }
}
