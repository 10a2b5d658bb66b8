//! The binary the image ships, built exactly as the Dockerfile's `cargo build` line builds it
//! (its environment assignments included), into a target directory of the tests'. Test
//! binaries that need it share one build (cargo's lock on the directory serializes them).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Dockerfile's build line: (environment assignments, cargo's arguments after `cargo`).
pub fn dockerfile_build_line() -> (Vec<(String, String)>, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("reading the Dockerfile");
    let line = dockerfile
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("RUN ") && l.contains("cargo build"))
        .expect("the Dockerfile builds with cargo");
    let mut env = Vec::new();
    let mut words = shell_words(line.trim_start_matches("RUN "))
        .into_iter()
        .peekable();
    while let Some((k, v)) = words.peek().and_then(|w| {
        w.split_once('=')
            .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    }) {
        env.push((k.to_string(), v.to_string()));
        words.next();
    }
    let words: Vec<String> = words.collect();
    assert_eq!(words.first().map(String::as_str), Some("cargo"), "{line}");
    (env, words[1..].to_vec())
}

/// Splits a shell line into words, honouring double quotes (enough for the Dockerfile's line).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Builds (or finds up to date) the shipped binary and returns its path.
pub fn shipped_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (env, args) = dockerfile_build_line();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shipped");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "building the shipped binary as the Dockerfile does (a cold release build takes several minutes)..."
    );
    let status = Command::new(cargo)
        .current_dir(root)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // The tests' own RUSTFLAGS (none, usually) must not leak into the shipped build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(&args)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("running cargo");
    assert!(status.success(), "the Dockerfile's cargo build failed");
    let triple = args
        .iter()
        .position(|a| a == "--target")
        .map(|i| args[i + 1].clone());
    let dir = match triple {
        Some(t) => target.join(t).join("release"),
        None => target.join("release"),
    };
    dir.join("workspace-assist")
}
