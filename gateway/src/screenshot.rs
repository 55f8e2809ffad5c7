//! Screenshots of VM screens: KubeVirt's `vnc/screenshot` subresource, a
//! short per-VM cache and a single flight per VM.
//!
//! A teacher's grid of thumbnails polls every VM of a class, possibly from
//! several tabs and teachers at once. [`Screenshots`] keeps each VM's last
//! PNG for `--screenshot-cache-ttl` and lets concurrent requests for one VM
//! share one capture (moka's `try_get_with`), so the VM side sees at most
//! one capture per VM per TTL whatever the number of viewers. Errors are
//! shared by the waiting requests but not cached.
//!
//! What a capture does to a student's live screen depends on KubeVirt:
//! - >= 1.7: virt-handler asks libvirt for the screen; VNC viewers are not touched.
//! - 1.6.3 to 1.6.x: virt-api opens a VNC connection with `preserveSession=true`:
//!   while someone views the screen the capture fails ("Active VNC connection"),
//!   reported as 4013 / 409 `vm_busy`; the viewer keeps the screen.
//! - 0.58 to 1.6.2: virt-api opens a plain VNC connection, which drops the live
//!   viewer. The gateway cannot tell these versions apart, so unless
//!   `--vnc-preserve-session` says KubeVirt is >= 1.6.3 it refuses (`vm_busy`)
//!   to capture a screen it is relaying itself; a viewer connected through
//!   another replica cannot be seen and would be dropped.
//!
//! The static backend captures with a shared RFB connection of its own
//! ([`crate::backend::rfb_capture`]), which leaves viewers connected
//! ([`Backend::captures_keep_viewers`]), so its relayed screens are captured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, StatusCode};
use http_body_util::BodyExt;

use crate::metrics::Metrics;
use crate::upstream::{Backend, KubeVirtBackend, UpstreamError, UpstreamTarget, VmPhase};
use crate::vm_index::VmIndex;

/// Largest screenshot accepted by default (an uncompressed 1920x1200 RGBA is 9 MB;
/// KubeVirt's PNGs of a desktop are far smaller).
pub const DEFAULT_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Memory the screenshot cache may take, all VMs together.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// The eight bytes every PNG starts with.
const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Screenshot flags.
#[derive(Debug, Clone, Copy)]
pub struct ScreenshotSettings {
    /// How long a VM's screenshot is served from the cache.
    pub cache_ttl: Duration,
    /// Time allowed for one capture.
    pub timeout: Duration,
    /// KubeVirt's captures never drop a VNC viewer (>= 1.6.3, as
    /// `--vnc-preserve-session` states); otherwise a screen this gateway
    /// relays is not captured.
    pub captures_keep_viewers: bool,
}

impl Default for ScreenshotSettings {
    fn default() -> Self {
        ScreenshotSettings {
            cache_ttl: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            captures_keep_viewers: false,
        }
    }
}

/// The per-VM cache and single flight in front of [`Backend::screenshot`].
pub struct Screenshots {
    cache: moka::future::Cache<(String, String), Bytes>,
    settings: ScreenshotSettings,
    metrics: Arc<Metrics>,
}

impl Screenshots {
    /// An empty cache.
    pub fn new(settings: ScreenshotSettings, metrics: Arc<Metrics>) -> Screenshots {
        let cache = moka::future::Cache::builder()
            .max_capacity(CACHE_BYTES)
            .weigher(|_: &(String, String), png: &Bytes| {
                u32::try_from(png.len()).unwrap_or(u32::MAX)
            })
            .time_to_live(settings.cache_ttl.max(Duration::from_millis(1)))
            .build();
        Screenshots {
            cache,
            settings,
            metrics,
        }
    }

    /// The VM's screenshot: from the cache, from a capture already under way,
    /// or from a new capture (bounded by the timeout).
    ///
    /// # Errors
    /// The capture's error, shared by every request that waited for it.
    pub async fn get(
        &self,
        backend: &dyn Backend,
        target: UpstreamTarget<'_>,
    ) -> Result<Bytes, Arc<UpstreamError>> {
        let key = (target.namespace.to_string(), target.vmi.to_string());
        self.cache
            .try_get_with(key, async {
                let started = Instant::now();
                let captured =
                    match tokio::time::timeout(self.settings.timeout, backend.screenshot(target))
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(UpstreamError::Timeout),
                    };
                self.metrics
                    .screenshot_seconds
                    .observe(started.elapsed().as_secs_f64());
                let outcome = if captured.is_ok() { "ok" } else { "error" };
                self.metrics
                    .screenshot_captures
                    .with_label_values(&[outcome])
                    .inc();
                captured
            })
            .await
    }
}

impl KubeVirtBackend {
    /// Answers listings and screenshot pre-checks from `index`.
    pub fn with_vm_index(mut self, index: Arc<VmIndex>) -> KubeVirtBackend {
        self.vms = Some(index);
        self
    }

    /// Refuses screenshots larger than `bytes`.
    pub fn screenshot_max_bytes(mut self, bytes: usize) -> KubeVirtBackend {
        self.screenshot_max_bytes = bytes;
        self
    }

    /// The API path of a VMI's screenshot subresource. No `moveCursor`: moving
    /// the pointer would disturb the student working on that screen.
    pub fn screenshot_path(target: UpstreamTarget<'_>) -> String {
        format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachineinstances/{}/vnc/screenshot",
            target.namespace, target.vmi
        )
    }
}

/// What the VM index already says about a screenshot, so a stopped, paused,
/// screen-less or unknown VM costs no API request. KubeVirt checks the same
/// (`validateVMIForVNC`) and answers with these messages.
fn precheck(index: Option<&VmIndex>, target: UpstreamTarget<'_>) -> Result<(), UpstreamError> {
    let Some(index) = index.filter(|i| i.is_synced()) else {
        return Ok(());
    };
    let vm = index
        .get(target.namespace, target.vmi)
        .ok_or(UpstreamError::NotFound)?;
    if !vm.screen {
        return Err(UpstreamError::NotRunning(
            "No graphics devices are present.".into(),
        ));
    }
    match vm.phase {
        VmPhase::Running => Ok(()),
        VmPhase::Paused => Err(UpstreamError::NotRunning("VMI is paused".into())),
        // A VirtualMachine without a VMI has no screen to take.
        VmPhase::Stopped => Err(UpstreamError::NotFound),
        _ => Err(UpstreamError::NotRunning("VMI is not running".into())),
    }
}

/// [`Backend::screenshot`] of the KubeVirt backend.
pub(crate) async fn kubevirt_screenshot(
    backend: &KubeVirtBackend,
    target: UpstreamTarget<'_>,
) -> Result<Bytes, UpstreamError> {
    precheck(backend.vms.as_deref(), target)?;
    let api = backend.api();
    let (generation, client) = api.current();
    match fetch(&client, target, backend.screenshot_max_bytes).await {
        // The token may have been rotated since kube last read it.
        Err(UpstreamError::Unauthorized(_)) if api.refresh(generation) => {
            fetch(&api.current().1, target, backend.screenshot_max_bytes).await
        }
        other => other,
    }
}

async fn fetch(
    client: &kube::Client,
    target: UpstreamTarget<'_>,
    max_bytes: usize,
) -> Result<Bytes, UpstreamError> {
    let request = Request::get(KubeVirtBackend::screenshot_path(target))
        .header(ACCEPT, "image/png")
        .body(kube::client::Body::empty())
        .map_err(|e| UpstreamError::Transport(e.to_string()))?;
    let response = client
        .send(request)
        .await
        .map_err(|e| UpstreamError::Transport(e.to_string()))?;
    let status = response.status();
    let is_png = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"image/png"));
    let body = http_body_util::Limited::new(response.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| {
            UpstreamError::Transport(format!(
                "reading the screenshot (limit {max_bytes} bytes): {e}"
            ))
        })?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(crate::upstream::classify_refusal(
            status,
            &String::from_utf8_lossy(&body),
        ));
    }
    if !is_png || !body.starts_with(PNG_SIGNATURE) {
        return Err(UpstreamError::Transport(
            "the screenshot subresource did not answer with a PNG".into(),
        ));
    }
    Ok(body)
}
