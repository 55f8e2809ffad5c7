//! Benchmark tools for labgate: a KubeVirt-like upstream, a load generator and an
//! orchestrator that runs labgate side by side with a direct connection, nginx,
//! websockify and a Python relay in the style of the Lab Orchestrator prototype.

pub mod client;
pub mod contender;
pub mod crowd;
pub mod errors;
pub mod http_get;
pub mod ledger;
pub mod pattern;
pub mod plan;
pub mod procfs;
pub mod report;
pub mod stats;
pub mod token;
pub mod trend;
pub mod upstream_path;
