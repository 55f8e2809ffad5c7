//! Deployment manifests that belong to the lab contract, embedded so the chart and tests use one file.

/// The ValidatingWebhookConfiguration `labgate-admission` needs. The chart
/// fills in `clientConfig` (service namespace) and the exempt namespace list.
pub const VALIDATING_WEBHOOK_YAML: &str = include_str!("../manifests/validating-webhook.yaml");
