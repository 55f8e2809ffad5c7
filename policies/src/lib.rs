//! The lab contract shared by the gateway, the admission service and portals.
//!
//! A *lab* is a Kubernetes namespace that holds one user's VMs. A portal makes a
//! namespace a lab by setting the labels and annotations defined here; the
//! gateway reads them to decide who may open a VM's screen or console, and the
//! admission service makes sure nobody else can set, change or strip them and
//! that every lab carries the canonical isolation NetworkPolicy.
//!
//! # Layout
//! - [`lab`]: label and annotation names, the owner hash, and [`Lab`], the
//!   parsed view of a lab namespace.
//! - [`isolation`]: the canonical isolation NetworkPolicy (embedded YAML, one
//!   definition for the chart and the admission service) and its comparison.
//! - [`manifests`]: the ValidatingWebhookConfiguration the admission service needs.
//! - [`workloads`]: the resource kinds that may not be created in a lab before
//!   its isolation policy exists.

pub mod isolation;
pub mod lab;
pub mod manifests;
pub mod workloads;

pub use isolation::{EgressMode, ISOLATION_POLICY_NAME};
pub use lab::{
    LAB_LABEL, LAB_SELECTOR, Lab, LabError, MEMBERS_ANNOTATION, OWNER_ANNOTATION, OWNER_HASH_LABEL,
    SYSTEM_NAMESPACES, encode_members, is_system_namespace, owner_hash,
};
