//! Test support for labgate: a faithful in-process Kubernetes + KubeVirt API server, a throw-away
//! CA, and real upstream processes (Xvnc, a socat PTY shell) standing in for a VM's screen and
//! serial console.
//!
//! # Layout
//! - [`certs`]: rcgen test CA, leaf certificates (also as files), rustls configs.
//! - [`standin`]: the API server ([`standin::StandIn`]): TLS + bearer auth, generic object store
//!   with list/watch (resourceVersion, 410, bookmarks, selector transitions), create/replace/patch/
//!   delete with NamespaceLifecycle and an admission hook, and KubeVirt `vnc`/`console` websockets.
//! - [`idp`]: an identity provider's JWKS endpoint over HTTPS ([`idp::JwksServer`]), counting fetches.
//! - [`promtool`]: `promtool check metrics` on an exposition.
//! - [`log_capture`]: every log line and panic message of a test process, to search for secrets.
//! - [`upstreams`]: [`upstreams::Xvnc`] and [`upstreams::SerialConsole`] processes, killed on drop.

pub mod certs;
pub mod idp;
pub mod log_capture;
pub mod promtool;
pub mod standin;
pub mod upstreams;
