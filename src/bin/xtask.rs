//! The developer's entry point for the gates CI runs: `cargo xtask ci` (format, lints, dependency
//! policy, then the tests), or one gate at a time: `cargo xtask fmt|clippy|deny|test`.
//!
//! An xtask rather than a justfile or a shell script: it needs nothing but cargo (no `just` to
//! install first, no shell), it installs the one tool it needs (cargo-deny) itself, and it is
//! built only with the `dev-tools` feature, so the shipped binary never holds it.

use std::process::{Command, ExitCode};
use std::time::Instant;

/// The cargo-deny release the policy in `deny.toml` is written for.
const CARGO_DENY: &str = "cargo-deny@0.20.2";

/// The gates, in the order CI runs them: the quick ones first.
const GATES: [(&str, &[&str]); 4] = [
    ("fmt", &["fmt", "--all", "--check"]),
    (
        "clippy",
        &[
            "clippy",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    ),
    // The advisories check needs the RustSec database from GitHub: left to users' CI.
    (
        "deny",
        &["deny", "--locked", "check", "licenses", "bans", "sources"],
    ),
    ("test", &["test", "--locked"]),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted: Vec<&str> = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ci"] => GATES.iter().map(|(name, _)| *name).collect(),
        ["lint"] => vec!["fmt", "clippy", "deny"],
        [one] if GATES.iter().any(|(name, _)| name == one) => vec![*one],
        _ => {
            eprintln!("usage: cargo xtask ci | lint | fmt | clippy | deny | test");
            return ExitCode::from(2);
        }
    };
    for (name, cargo_args) in GATES.iter().filter(|(name, _)| wanted.contains(name)) {
        if *name == "deny" && !has_cargo_deny() {
            eprintln!("--- installing {CARGO_DENY} (once; it takes a few minutes)");
            if !run(&["install", "--locked", CARGO_DENY]) {
                eprintln!("could not install {CARGO_DENY}: see cargo's message above");
                return ExitCode::FAILURE;
            }
        }
        eprintln!("--- {name}: cargo {}", cargo_args.join(" "));
        let started = Instant::now();
        if !run(cargo_args) {
            eprintln!("--- {name} failed after {} s", started.elapsed().as_secs());
            return ExitCode::FAILURE;
        }
        eprintln!("--- {name} passed in {} s", started.elapsed().as_secs());
    }
    ExitCode::SUCCESS
}

/// Runs cargo (the one that runs this xtask) with `args`; whether it succeeded.
fn run(args: &[&str]) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    match Command::new(cargo).args(args).status() {
        Ok(status) => status.success(),
        Err(error) => {
            eprintln!("cargo could not be started: {error}");
            false
        }
    }
}

fn has_cargo_deny() -> bool {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}
