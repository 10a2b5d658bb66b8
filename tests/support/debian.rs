//! Tools the tests take from Debian's packages, installed on first use where the machine
//! allows it (as root, with apt-get), so that `cargo test` needs nothing set up by hand there.
//! Anywhere else a missing tool is a failure that names the package to install.

use std::path::PathBuf;
use std::process::Command;

/// The command `tool`, from Debian's package `package` when it is not on PATH yet: installed
/// with apt-get when this runs as root on a machine that has it; otherwise a panic naming the
/// package.
pub fn tool(tool: &str, package: &str) -> PathBuf {
    if on_path(tool) {
        return PathBuf::from(tool);
    }
    // One install at a time across the test binaries that cargo runs one after another, and
    // across the threads of one binary.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if on_path(tool) {
        return PathBuf::from(tool);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || !on_path("apt-get") {
        panic!(
            "this test needs `{tool}`: install Debian's package `{package}` (for example `sudo apt-get install {package}`), or run the tests as root on a Debian-based machine, where they install it"
        );
    }
    eprintln!("installing Debian's package {package} for `{tool}` (apt-get; once per machine)...");
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    assert!(
        matches!(update, Ok(s) if s.success()),
        "apt-get update failed ({update:?}): install Debian's package `{package}` by hand"
    );
    let install = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .output()
        .unwrap_or_else(|e| panic!("running apt-get: {e}"));
    assert!(
        install.status.success(),
        "apt-get install {package} failed:\n{}",
        String::from_utf8_lossy(&install.stderr)
    );
    assert!(
        on_path(tool),
        "Debian's package {package} is installed but `{tool}` is still not on PATH"
    );
    PathBuf::from(tool)
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
