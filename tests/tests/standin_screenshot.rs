//! The stand-in's `vnc/screenshot` subresource against a real Xvnc, and its list+watch of
//! VirtualMachineInstances and VirtualMachines across namespaces, through kube's own client.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use http_body_util::BodyExt as _;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchEvent, WatchParams,
};
use serde_json::Value;

use labgate_tests::standin::{GATEWAY_USER, ScreenshotMode, StandIn, UpstreamAddr, UserInfo, Vmi};
use labgate_tests::upstreams::Xvnc;

const COLOUR: [u8; 3] = [0xc0, 0x30, 0x60];

fn screenshot_path(ns: &str, vmi: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/vnc/screenshot"
    )
}

/// GET through kube's client: status, content type and body.
async fn get(client: &kube::Client, path: &str) -> (u16, String, Vec<u8>) {
    let request = http::Request::get(path)
        .body(kube::client::Body::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, body.to_vec())
}

fn message(body: &[u8]) -> String {
    let status: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(status["kind"], "Status", "{status}");
    status["message"].as_str().unwrap().to_string()
}

fn paint(xvnc: &Xvnc) {
    let colour = format!("#{:02x}{:02x}{:02x}", COLOUR[0], COLOUR[1], COLOUR[2]);
    let ok = std::process::Command::new("xsetroot")
        .args(["-display", &xvnc.display(), "-solid", &colour])
        .status()
        .expect("xsetroot (x11-xserver-utils) runs")
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshot_is_a_png_of_the_real_screen_with_kubevirts_refusals() {
    let standin = StandIn::start().await.unwrap();
    let xvnc = Xvnc::start().unwrap();
    paint(&xvnc);
    standin.lab_namespace("lab", "alice", &[]);
    let screen = || Some(UpstreamAddr::Unix(xvnc.socket()));
    standin.add_vmi("lab", "vm1", Vmi::running(screen(), None));
    standin.add_vmi("lab", "headless", Vmi::running(None, None));
    standin.add_vmi(
        "lab",
        "starting",
        Vmi {
            phase: "Scheduled".into(),
            vnc: screen(),
            console: None,
        },
    );
    let client = standin.client(&standin.gateway_token());

    let (status, content_type, png_bytes) = get(&client, &screenshot_path("lab", "vm1")).await;
    assert_eq!((status, content_type.as_str()), (200, "image/png"));
    let mut reader = png::Decoder::new(std::io::Cursor::new(&png_bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (800, 600));
    let at = (300 * 800 + 400) * info.color_type.samples();
    assert_eq!(&buf[at..at + 3], &COLOUR);

    // The older API version serves it too.
    let (status, _, _) = get(
        &client,
        &screenshot_path("lab", "vm1").replace("/v1/", "/v1alpha3/"),
    )
    .await;
    assert_eq!(status, 200);

    for (vmi, code, text) in [
        (
            "missing",
            404,
            "virtualmachineinstances.kubevirt.io \"missing\" not found",
        ),
        ("headless", 400, "No graphics devices are present."),
        ("starting", 400, "VMI is not running"),
    ] {
        let (status, _, body) = get(&client, &screenshot_path("lab", vmi)).await;
        assert_eq!(status, code, "{vmi}");
        assert_eq!(message(&body), text, "{vmi}");
    }

    // RBAC: the subresource is its own resource, `virtualmachineinstances/vnc/screenshot`.
    standin.deny_subresource(GATEWAY_USER, "vnc/screenshot", true);
    let (status, _, body) = get(&client, &screenshot_path("lab", "vm1")).await;
    assert_eq!(status, 403);
    assert!(
        message(&body).contains("virtualmachineinstances/vnc/screenshot"),
        "{}",
        message(&body)
    );
    standin.add_token("stranger-token", UserInfo::user("stranger"));
    let stranger = standin.client("stranger-token");
    standin.deny_subresource(GATEWAY_USER, "vnc/screenshot", false);
    assert_eq!(get(&stranger, &screenshot_path("lab", "vm1")).await.0, 403);
    assert_eq!(standin.screenshot_requests().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_capture_does_to_a_viewer_depends_on_the_kubevirt_version() {
    let standin = StandIn::start().await.unwrap();
    let xvnc = Xvnc::start().unwrap();
    standin.lab_namespace("lab", "alice", &[]);
    standin.add_vmi(
        "lab",
        "vm1",
        Vmi::running(Some(UpstreamAddr::Unix(xvnc.socket())), None),
    );
    let client = standin.client(&standin.gateway_token());
    let path = screenshot_path("lab", "vm1");

    // Keep the upgraded connection alive through the response body's owner.
    let upgraded = {
        let request = http::Request::get(
            "/apis/subresources.kubevirt.io/v1/namespaces/lab/virtualmachineinstances/vm1/vnc",
        )
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "plain.kubevirt.io")
        .body(kube::client::Body::empty())
        .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 101);
        hyper::upgrade::on(response).await.unwrap()
    };
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ok(_))), "RFB version from Xvnc");

    // >= 1.7 (default): libvirt's capture leaves the viewer alone.
    assert_eq!(get(&client, &path).await.0, 200);
    // 1.6.3+: refused while a viewer is connected.
    standin.set_screenshot_mode(ScreenshotMode::PreserveSession, Duration::ZERO);
    let (status, _, body) = get(&client, &path).await;
    assert_eq!(status, 500);
    assert!(message(&body).contains("Active VNC connection"));
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(quiet.is_err(), "the viewer is still connected: {quiet:?}");
    // Older: the capture's VNC connection drops the viewer (no close frame).
    standin.set_screenshot_mode(ScreenshotMode::TakesOver, Duration::ZERO);
    assert_eq!(get(&client, &path).await.0, 200);
    let ended = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("the viewer was dropped");
    assert!(
        !matches!(
            ended,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
        ),
        "{ended:?}"
    );
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubevirt.io", "v1", kind), plural)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmis_and_vms_are_listed_and_watched_across_namespaces() {
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice", &[]);
    standin.lab_namespace("lab-b", "bob", &[]);
    standin.add_vmi("lab-a", "vm1", Vmi::running(None, None));
    standin.add_vm("lab-b", "vm2", "Halted", true, false);
    let client = standin.client(&standin.gateway_token());
    let vmis: kube::Api<DynamicObject> = kube::Api::all_with(
        client.clone(),
        &resource("VirtualMachineInstance", "virtualmachineinstances"),
    );
    let vms: kube::Api<DynamicObject> =
        kube::Api::all_with(client, &resource("VirtualMachine", "virtualmachines"));

    let listed = vmis.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.namespace.as_deref(), Some("lab-a"));
    assert_eq!(listed.items[0].data["status"]["phase"], "Running");
    let listed_vms = vms.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed_vms.items[0].metadata.name.as_deref(), Some("vm2"));
    assert_eq!(
        listed_vms.items[0].data["spec"]["template"]["spec"]["domain"]["devices"]["autoattachSerialConsole"],
        false
    );

    let rv = listed.metadata.resource_version.unwrap();
    let mut stream = vmis
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    standin.add_vmi("lab-b", "vm2", Vmi::running(None, None));
    standin.set_vmi_paused("lab-a", "vm1", true);
    standin.delete_vmi("lab-a", "vm1");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match event {
            WatchEvent::Added(o) => format!("ADDED {}", o.metadata.namespace.unwrap()),
            WatchEvent::Modified(o) => format!(
                "MODIFIED {} {}",
                o.metadata.namespace.unwrap(),
                o.data["status"]["conditions"][0]["type"]
            ),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.namespace.unwrap()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        ["ADDED lab-b", "MODIFIED lab-a \"Paused\"", "DELETED lab-a"]
    );
}
