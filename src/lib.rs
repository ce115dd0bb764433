//! The Billecta onboarding service.
//!
//! The Billecta client (`billecta_client`), the Billecta simulator (`billecta_sim`) and the drills and
//! benchmarks (`billecta_tools`) are crates of their own under `crates/`; ARCHITECTURE.md says which
//! may use which, and where each invariant is enforced.
//!
//! Layout, outermost first:
//! - [`config`] — every setting, from flags or the environment.
//! - [`app`] — builds the server from a configuration and runs it until shutdown.
//! - [`grpc`] — the transport: tonic services, request ids, the mapping of errors to statuses.
//! - [`operations`] — each RPC's work, from parsed input to stored result and audit event.
//! - [`desired`] — how the setup asked for maps onto Billecta's creditor.
//! - [`domain`] — stages, validation and the onboarding record; no gRPC, no SQL.
//! - [`storage`] — SQLite and PostgreSQL behind one API; every function takes the tenant it works on.
//! - [`auth`] — callers, their API keys, permissions and tenants.
//! - [`reconciler`] — the background worker: resumes waiting stages, re-checks live setups.
//! - [`rotation`] — re-encrypting stored secrets under the active key, to retire an old one.
//! - [`scratch`] — fresh PostgreSQL databases for tests, drills and benchmarks.
//! - [`secret`] — a value that cannot be printed by accident (the Billecta client's type).
//! - [`crypto`] — encryption of stored secrets: AES-256-GCM, key ids, rotation.
//! - [`metrics`] — Prometheus metrics and their endpoint.
//! - [`telemetry`] — logging.

pub mod app;
pub mod auth;
pub mod bounded;
pub mod config;
pub mod crypto;
pub mod desired;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod operations;
pub mod reconciler;
pub mod rotation;
pub mod scratch;
pub mod secret;
pub mod storage;
pub mod telemetry;

/// The generated API types and the file descriptor set served by reflection.
pub mod proto {
    tonic::include_proto!("payway.billecta.onboarding.v1");

    /// The encoded descriptors of the API and the well-known types it imports.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("onboarding_descriptor");
}
