//! A local development environment: the project's real control plane (for tests and the demo),
//! the one-command demo of the whole lifecycle, and the benchmark. Compiled only with the
//! `dev-tools` feature (on by default; the image is built without it).

pub mod bench;
pub mod commands;
pub mod control_plane;
pub mod demo;
