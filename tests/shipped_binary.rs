//! The image's binary holds the operator and the simulator, not the developer tools: built the
//! way the Dockerfile builds it (its `cargo build` line, run as written, into a target directory
//! of its own), it has no `demo` or `bench` command.

use std::path::Path;
use std::process::Command;

#[test]
fn the_binary_built_as_the_dockerfile_builds_it_has_no_dev_tools() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("reading the Dockerfile");
    let line = dockerfile.lines().map(str::trim).find(|l| l.starts_with("RUN cargo build")).expect("the Dockerfile builds with cargo");
    let words: Vec<&str> = line.trim_start_matches("RUN ").split_whitespace().collect();
    assert!(words.contains(&"--release") && words.contains(&"--no-default-features"), "{line}");

    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shipped");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the shipped binary as the Dockerfile does (a cold release build takes several minutes)...");
    let status = Command::new(cargo)
        .current_dir(root)
        .args(&words[1..])
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("running cargo");
    assert!(status.success(), "`{line}` failed");

    let binary = target.join("release/workspace-assist");
    let help = Command::new(&binary).arg("--help").output().expect("running the shipped binary");
    let help = String::from_utf8_lossy(&help.stdout);
    for present in ["run", "simulate", "crd"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(present)), "the shipped binary lacks `{present}`:\n{help}");
    }
    for absent in ["demo", "bench"] {
        assert!(!help.lines().any(|l| l.trim_start().starts_with(absent)), "the shipped binary has `{absent}`:\n{help}");
        let out = Command::new(&binary).arg(absent).output().unwrap();
        assert!(!out.status.success(), "`{absent}` ran in the shipped binary");
    }
}
