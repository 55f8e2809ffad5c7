//! Entry points for the fuzz targets (`gateway/fuzz/`) and for the stable
//! test that replays their committed corpus (`gateway/tests/fuzz_corpus.rs`):
//! one function per target, taking raw bytes, panicking only when an
//! invariant breaks. Not part of the gateway's API.

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::credentials;
use crate::metrics::Metrics;
use crate::route::{self, Target, is_dns_label};
use crate::splice::frames::{Found, FrameScanner, Side};
use crate::token::{KeyFile, TokenSettings, TokenVerifier};

/// Route and credential extraction. Input: the request target (`path?query`)
/// on the first line, then `name: value` header lines.
pub fn route_and_credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let Target::Session(route) = route::parse(path, query) else {
        return;
    };
    // Whatever the input, a parsed route names DNS labels only.
    assert!(is_dns_label(&route.namespace) && is_dns_label(&route.vmi));
    if let Ok(Some(token)) = credentials::token(&route, &headers) {
        assert!(!token.is_empty(), "an empty token is no token");
        if token.len() >= 8 {
            assert!(
                !format!("{route:?}").contains(&token),
                "a route's Debug output shows its token"
            );
        }
    }
    // Never echoes the bearer protocol (it carries the token).
    if let Some(p) = credentials::negotiate_protocol(&headers) {
        assert!(!p.starts_with(credentials::BEARER_PROTOCOL_PREFIX));
    }
}

/// The HMAC secret of the fuzzing verifier.
pub const FUZZ_SECRET: &[u8] = b"labgate-fuzz-secret-0123456789abcdef";
/// The audience the fuzzing verifier requires.
pub const FUZZ_AUDIENCE: &str = "labgate";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    verifier: TokenVerifier,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, FUZZ_SECRET).expect("secret file");
        let verifier = TokenVerifier::new(
            TokenSettings {
                algorithms: vec![jsonwebtoken::Algorithm::HS256],
                hmac_secret_files: vec![KeyFile {
                    kid: None,
                    path: secret,
                }],
                audiences: vec![FUZZ_AUDIENCE.into()],
                leeway: std::time::Duration::from_secs(0),
                cache_capacity: 1,
                ..TokenSettings::default()
            },
            Arc::new(Metrics::new()),
        )
        .expect("fuzzing verifier");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Fixture {
            runtime,
            verifier,
            _dir: dir,
        }
    })
}

/// JWT header and claims handling. Input: a header JSON and a claims JSON
/// separated by the first NUL byte. Both are verified as they are (a token
/// nobody signed) and signed with the right secret, so the claims checks run
/// on arbitrary header and claims texts.
pub fn jwt(data: &[u8]) {
    use base64::Engine;
    let f = fixture();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (header, claims) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"{}"[..]),
    };
    // Unsigned, and the raw bytes as a token: never accepted.
    let unsigned = format!("{}.{}.", b64.encode(header), b64.encode(claims));
    assert!(f.runtime.block_on(f.verifier.verify(&unsigned)).is_err());
    let raw = String::from_utf8_lossy(data);
    assert!(f.runtime.block_on(f.verifier.verify(&raw)).is_err());
    // Signed with the trusted secret: accepted only with sane claims.
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET);
    let Ok(signature) =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
    else {
        return;
    };
    let token = format!("{message}.{signature}");
    if let Ok(claims) = f.runtime.block_on(f.verifier.verify(&token)) {
        let header: serde_json::Value =
            serde_json::from_slice(header).expect("an accepted header is JSON");
        assert_eq!(header["alg"], "HS256", "only the pinned algorithm");
        assert!(!claims.sub.is_empty(), "an accepted token names a user");
        let now = crate::respond::unix_now();
        assert!(claims.exp > now, "an accepted token has not expired");
    }
}

/// The splice's frame scanner, both directions, fed in arbitrary pieces the
/// way a pump reads: the result must not depend on how reads split the
/// stream. Input: byte 0 picks the side and the message limit, bytes 1..4
/// the read sizes, the rest is the stream.
pub fn frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let side = if mode & 1 == 0 {
        Side::Client
    } else {
        Side::Upstream
    };
    let max_message = [16u64, 125, 4096, 1 << 20][usize::from(mode >> 1) & 3];
    let (sizes, stream) = rest.split_at(rest.len().min(4));
    let whole = relay(side, max_message, stream, &[usize::MAX]);
    let sizes: Vec<usize> = sizes.iter().map(|s| usize::from(*s) + 1).collect();
    if !sizes.is_empty() {
        let pieces = relay(side, max_message, stream, &sizes);
        assert_eq!(whole, pieces, "the split of reads changed the outcome");
    }
}

/// What a relay of `stream` read in pieces of `sizes` (cycled) forwards:
/// the bytes, the data payload count and what stopped it.
fn relay(side: Side, max_message: u64, stream: &[u8], sizes: &[usize]) -> (Vec<u8>, u64, Found) {
    let mut scanner = FrameScanner::new(side, max_message);
    let mut pending: Vec<u8> = Vec::new();
    let mut forwarded = Vec::new();
    let mut data = 0;
    let mut offset = 0;
    let mut sizes = sizes.iter().cycle();
    while offset < stream.len() {
        let take = (*sizes.next().unwrap_or(&1)).min(stream.len() - offset);
        pending.extend_from_slice(&stream[offset..offset + take]);
        offset += take;
        let scan = scanner.scan(&mut pending);
        assert!(scan.forward <= pending.len());
        forwarded.extend_from_slice(&pending[..scan.forward]);
        data += scan.data;
        if scan.found != Found::Nothing {
            return (forwarded, data, scan.found);
        }
        pending.drain(..scan.forward);
        // A carried-over remainder is an incomplete header, never more.
        assert!(pending.len() < crate::splice::frames::MAX_HEADER);
    }
    (forwarded, data, Found::Nothing)
}

/// A namespace the fuzzing lab index exempts, as `--exempt-namespaces` would.
pub const FUZZ_EXEMPT_NAMESPACE: &str = "labgate-system";
/// The one lab the fuzzing VM index follows.
pub const FUZZ_LAB: &str = "lab-1";

fn index_metrics() -> Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS.get_or_init(|| Arc::new(Metrics::new())).clone()
}

/// The indexes' decoding of what list+watch delivers. Input: JSON bytes,
/// decoded as the API server's answers would be: a namespace watch event, a
/// namespace list item, and a VMI/VM watch event (both kinds). Each decoded
/// object goes through the index the way the watch loops feed it.
pub fn index_events(data: &[u8]) {
    use kube::api::{DynamicObject, WatchEvent};
    if let Ok(event) =
        serde_json::from_slice::<WatchEvent<k8s_openapi::api::core::v1::Namespace>>(data)
    {
        match event {
            WatchEvent::Added(ns) | WatchEvent::Modified(ns) => namespace_seen(&ns, false),
            WatchEvent::Deleted(ns) => namespace_seen(&ns, true),
            WatchEvent::Bookmark(_) | WatchEvent::Error(_) => {}
        }
    }
    if let Ok(ns) = serde_json::from_slice::<k8s_openapi::api::core::v1::Namespace>(data) {
        namespace_seen(&ns, false);
    }
    if let Ok(event) = serde_json::from_slice::<WatchEvent<DynamicObject>>(data) {
        match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => vm_seen(&o, false),
            WatchEvent::Deleted(o) => vm_seen(&o, true),
            WatchEvent::Bookmark(_) | WatchEvent::Error(_) => {}
        }
    }
}

/// Checks the lab contract on one namespace and feeds it to a fresh index
/// as `namespace_watch` does (`entry_for`, then upsert or remove).
fn namespace_seen(ns: &k8s_openapi::api::core::v1::Namespace, deleted: bool) {
    use crate::index::{IndexPolicy, LabEntry, LabIndex, entry_for};
    use labgate_policies::{LAB_LABEL, Lab, OWNER_HASH_LABEL, is_system_namespace, owner_hash};

    let entry = entry_for(ns);
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    if let Some(LabEntry::Lab(lab)) = &entry {
        let labels = ns.metadata.labels.as_ref().expect("a lab has labels");
        assert_eq!(lab.namespace, name);
        assert!(
            ns.metadata.deletion_timestamp.is_none(),
            "a deleting namespace is a lab"
        );
        assert_eq!(labels.get(LAB_LABEL).map(String::as_str), Some("true"));
        assert!(!lab.owner.is_empty(), "a lab without owner");
        assert_eq!(lab.owner.trim(), lab.owner, "an owner id with outer blanks");
        assert_eq!(
            labels.get(OWNER_HASH_LABEL),
            Some(&owner_hash(&lab.owner)),
            "owner and hash label disagree"
        );
        assert!(
            !is_system_namespace(name),
            "a system namespace became a lab"
        );
        assert!(
            lab.members.iter().all(|m| !m.is_empty()),
            "an empty member id"
        );
        assert!(lab.admits(&lab.owner));
        assert!(!lab.admits(""), "the empty user is admitted");
        // What a portal writes for this lab reads back as the same lab.
        let (labels, annotations) = lab.metadata();
        assert_eq!(
            Lab::from_metadata(name, &labels, &annotations).as_ref(),
            Ok(lab)
        );
    }
    let index = LabIndex::with_policy(
        index_metrics(),
        IndexPolicy {
            exempt: [FUZZ_EXEMPT_NAMESPACE.to_string()].into(),
            ..IndexPolicy::default()
        },
    );
    if ns.metadata.name.is_none() {
        return;
    }
    match (deleted, entry.clone()) {
        (false, Some(entry)) => index.upsert(name, entry),
        _ => index.remove(name),
    }
    let kept = index.get(name);
    if deleted || index.is_exempt(name) {
        assert!(kept.is_none(), "{name} indexed although deleted or exempt");
    } else {
        assert_eq!(
            kept.as_deref(),
            entry.as_ref(),
            "the index changed the entry"
        );
    }
    assert!(index.lab_namespaces().iter().all(|n| n == name));
}

/// Decodes one VMI/VM object as either kind and feeds it to a VM index that
/// follows one lab ([`FUZZ_LAB`]), as `vm_watch` does.
fn vm_seen(object: &kube::api::DynamicObject, deleted: bool) {
    use crate::index::{LabEntry, LabIndex};
    use crate::vm_index::{Observed, Source, VmIndex, VmIndexLimits};

    let (Some(ns), Some(name)) = (
        object.metadata.namespace.as_deref(),
        object.metadata.name.as_deref(),
    ) else {
        return;
    };
    let labs = LabIndex::new(index_metrics());
    labs.upsert(
        FUZZ_LAB,
        LabEntry::Lab(labgate_policies::Lab {
            namespace: FUZZ_LAB.into(),
            owner: "alice".into(),
            members: vec![],
        }),
    );
    let index = VmIndex::new(labs, VmIndexLimits::default(), index_metrics());
    let vm = Observed::from_object(Source::Vm, &object.data);
    let vmi = Observed::from_object(Source::Vmi, &object.data);
    assert!(
        vm.phase.is_none() && vmi.phase.is_some(),
        "a phase for the wrong kind"
    );
    index.apply(Source::Vm, ns, name, Some(vm));
    match index.get(ns, name) {
        Some(s) if ns == FUZZ_LAB => {
            assert_eq!(
                (s.phase, s.screen, s.console),
                (crate::vm_index::VmPhase::Stopped, vm.screen, vm.console)
            );
        }
        None if ns != FUZZ_LAB => {}
        other => panic!("VM {ns}/{name} indexed as {other:?}"),
    }
    index.apply(Source::Vmi, ns, name, Some(vmi));
    if let Some(s) = index.get(ns, name) {
        assert_eq!(Some(s.phase), vmi.phase, "a VMI's phase is the VM's");
        assert_eq!((s.screen, s.console), (vmi.screen, vmi.console));
    }
    if deleted {
        index.apply(Source::Vmi, ns, name, None);
        index.apply(Source::Vm, ns, name, None);
        assert!(index.get(ns, name).is_none(), "a deleted VM stays listed");
    }
}
