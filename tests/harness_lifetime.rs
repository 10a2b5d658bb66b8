//! Proves that the control-plane harness never outlives the process that started it, even when
//! that process is killed with SIGKILL (the harness shuts down when its standard input closes).
//!
//! This test binary has no libtest harness: it re-runs itself as the "holder" process, which
//! starts a harness, prints its pid and waits to be killed.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOLDER_ARG: &str = "--hold-control-plane";

fn main() {
    if std::env::args().any(|a| a == HOLDER_ARG) {
        hold();
        return;
    }
    // Behave like a libtest binary when asked to list or filter tests.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("harness_dies_with_a_killed_parent: test");
        return;
    }
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-'))
        && !"harness_dies_with_a_killed_parent".contains(filter.as_str())
    {
        println!("0 passed, 0 failed");
        return;
    }
    println!("test harness_dies_with_a_killed_parent ...");
    match harness_dies_with_a_killed_parent() {
        Ok(()) => {
            println!("test harness_dies_with_a_killed_parent ... ok");
            println!("1 passed, 0 failed");
        }
        Err(e) => {
            println!("test harness_dies_with_a_killed_parent ... FAILED\n{e}");
            println!("0 passed, 1 failed");
            std::process::exit(101);
        }
    }
}

fn hold() {
    let cp =
        support::ControlPlane::start(&support::control_plane::harness()).unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "HARNESS_DIR {}",
        cp.kubeconfig
            .parent()
            .expect("the kubeconfig is in the harness's directory")
            .display()
    );
    println!("HARNESS_PID {}", cp.pid);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn harness_dies_with_a_killed_parent() -> Result<(), String> {
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .arg(HOLDER_ARG)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the holder: {e}"))?;
    let (mut pid, mut dir) = (None, None);
    for line in BufReader::new(holder.stdout.take().unwrap()).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(d) = line.strip_prefix("HARNESS_DIR ") {
            dir = Some(std::path::PathBuf::from(d.trim()));
        }
        if let Some(p) = line.strip_prefix("HARNESS_PID ") {
            pid = Some(p.trim().parse::<i32>().map_err(|e| e.to_string())?);
            break;
        }
    }
    let pid = pid.ok_or("the holder exited without starting a harness")?;
    if !alive(pid) {
        return Err(format!("harness {pid} is not running while its holder lives"));
    }
    // The test server's own temporary files (certificates) are in the harness's directory, so
    // they go with it rather than pile up in the system's temporary directory.
    let scratch = dir
        .as_ref()
        .ok_or("the holder did not say where the harness lives")?
        .join("tmp");
    let own_files = std::fs::read_dir(&scratch)
        .map(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("kubernetes-kube-apiserver")
            })
        })
        .unwrap_or(false);
    if !own_files {
        return Err(format!(
            "the test server's temporary files are not in {}",
            scratch.display()
        ));
    }

    holder.kill().map_err(|e| format!("SIGKILL to the holder: {e}"))?; // Child::kill sends SIGKILL
    holder.wait().map_err(|e| e.to_string())?;

    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        if Instant::now() > deadline {
            return Err(format!(
                "harness {pid} still running 30s after its parent was SIGKILLed"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // It cleaned up on its way out, although its parent (and its output pipes) were gone.
    let dir = dir.ok_or("the holder did not say where the harness keeps its data")?;
    if dir.exists() {
        return Err(format!("the harness left its directory {} behind", dir.display()));
    }
    Ok(())
}

/// Whether a process with this pid exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
