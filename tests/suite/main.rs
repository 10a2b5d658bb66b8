//! The integration tests that share one control plane (started once for this binary, a fresh
//! namespace per test): one test binary, so the crate is linked once and the control plane
//! starts once. Each module is one capability and says what it proves in its first lines; run
//! one with `cargo test --test suite <module>::`.
//!
//! Tests that need a process or a control plane of their own stay in files of their own in
//! `tests/`: they compare the API server's request counts, set environment variables, build
//! release binaries or load the machine for minutes.

#[path = "../support/mod.rs"]
mod support;

mod agencies;
mod ambient_credentials;
mod boundaries;
mod control_plane;
mod crds;
mod demo_and_simulator;
mod docs;
mod faults;
mod fuzz_parsers;
mod gitops;
mod hostile_input;
mod lifecycle;
mod manifests;
mod monitoring;
mod no_secret_leaks;
mod operations;
mod operator;
mod pacing;
mod rbac;
mod session_binding;
mod tenants;
mod time_boxed;
mod tls;
mod trust;
