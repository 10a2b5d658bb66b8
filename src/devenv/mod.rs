//! A local development environment: the project's real control plane (for tests and the demo)
//! and the one-command demo of the whole lifecycle.

pub mod bench;
pub mod control_plane;
pub mod demo;
