//! Starts the project's real control plane (kube-apiserver + embedded etcd, built from the Go
//! module in `tests/control-plane/`) for the integration tests and the local demo.
//!
//! The harness binary is built with `go build` when it is missing or its sources changed, and
//! stops when its standard input closes: when the process that started it exits, however it
//! exits, the operating system closes the pipe.

use anyhow::Context as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long the harness may take to print its readiness line once built.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running control-plane harness.
pub struct ControlPlane {
    /// Admin kubeconfig (loopback token of group system:masters).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Process id of the harness (apiserver and etcd run inside it).
    pub pid: u32,
    /// Milliseconds from process start to readiness, as reported by the harness.
    pub start_millis: u64,
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadyLine {
    server: String,
    kubeconfig: PathBuf,
    pid: u32,
    start_millis: u64,
}

/// Where the harness's Go sources are and where its binary goes.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The Go module of the harness (`tests/control-plane`).
    pub source_dir: PathBuf,
    /// Where the built binary and its fingerprint are kept.
    pub build_dir: PathBuf,
    /// Go build tags.
    pub tags: Vec<String>,
}

impl Harness {
    /// The harness of this source tree, built into `build_dir`.
    pub fn new(build_dir: impl Into<PathBuf>) -> Harness {
        Harness {
            source_dir: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join("control-plane"),
            build_dir: build_dir.into(),
            tags: Vec::new(),
        }
    }

    /// The Go module `tests/promtool`, which pins Prometheus's promtool, built into
    /// `build_dir` without the service-discovery plugins (`remove_all_sd`: the rule checks
    /// and unit tests need none, and they are most of its build).
    pub fn promtool(build_dir: impl Into<PathBuf>) -> Harness {
        Harness {
            source_dir: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join("promtool"),
            build_dir: build_dir.into(),
            tags: vec![PROMTOOL_TAGS.to_string()],
        }
    }

    /// The Go module `tests/flux`, which pins Flux's source-controller and kustomize-controller
    /// (and holds `cmd/gitserver`, Flux's test Git server with commits on request), built into
    /// `build_dir`.
    pub fn flux(build_dir: impl Into<PathBuf>) -> Harness {
        Harness {
            source_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("flux"),
            build_dir: build_dir.into(),
            tags: Vec::new(),
        }
    }

    /// The directory of `module` (a dependency of this harness's Go module) in Go's module
    /// cache, for files it ships besides its Go code (a controller's CRDs).
    pub fn module_dir(&self, module: &str) -> anyhow::Result<PathBuf> {
        let go = std::env::var_os("GO").unwrap_or_else(|| "go".into());
        let output = Command::new(&go)
            .current_dir(&self.source_dir)
            .env("GOTOOLCHAIN", "local")
            .args(["list", "-m", "-f", "{{.Dir}}", module])
            .output()
            .context("running go list")?;
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() || dir.is_empty() {
            anyhow::bail!(
                "go list -m {module} found no module directory (is it downloaded? go build fetches it):\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(PathBuf::from(dir))
    }
}

impl ControlPlane {
    /// Builds the harness if needed and starts a new instance in a temporary directory of the
    /// harness's own, which it removes when it exits (also when this process dies first: it
    /// exits when its standard input closes). A `ControlPlane` kept in a static is never dropped,
    /// so the directory must not depend on this process cleaning up.
    pub fn start(harness: &Harness) -> anyhow::Result<ControlPlane> {
        Self::spawn(harness, None, &[])
    }

    /// Starts an instance whose kubeconfig, logs and etcd data live in `dir` (kept after it
    /// stops); `args` are passed to the harness as they are.
    pub fn start_in(harness: &Harness, dir: &Path, args: &[&str]) -> anyhow::Result<ControlPlane> {
        Self::spawn(harness, Some(dir), args)
    }

    fn spawn(harness: &Harness, dir: Option<&Path>, args: &[&str]) -> anyhow::Result<ControlPlane> {
        let binary = build(harness)?;
        let dir_args: Vec<&std::ffi::OsStr> = match dir {
            Some(d) => vec!["-dir".as_ref(), d.as_os_str()],
            None => vec![],
        };
        let mut child = Command::new(&binary)
            .args(dir_args)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stdin = child.stdin.take();

        let readiness = read_readiness(stdout);
        let stderr_text = collect(stderr);
        let log = dir.map_or_else(
            || "control-plane.log in its temporary directory".to_string(),
            |d| d.join("control-plane.log").display().to_string(),
        );
        let ready = wait_ready(&mut child, &readiness, &stderr_text, &log)?;
        Ok(ControlPlane {
            kubeconfig: ready.kubeconfig,
            server: ready.server,
            pid: ready.pid,
            start_millis: ready.start_millis,
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
        })
    }

    /// Closes the harness's standard input (its shutdown signal) and waits for it to exit.
    pub fn stop(&self) -> std::process::ExitStatus {
        self.stdin.lock().unwrap().take();
        self.child
            .lock()
            .unwrap()
            .wait()
            .expect("waiting for the control plane")
    }
}

/// The harness's readiness line (`CONTROL_PLANE_READY {json}`), read from its output by a thread.
fn read_readiness(stdout: std::process::ChildStdout) -> mpsc::Receiver<Result<ReadyLine, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(json) = line.strip_prefix("CONTROL_PLANE_READY ") {
                let _ = tx.send(serde_json::from_str::<ReadyLine>(json).map_err(|e| e.to_string()));
            }
        }
    });
    rx
}

/// Everything the harness writes to stderr, for error messages.
fn collect(stderr: std::process::ChildStderr) -> std::sync::Arc<Mutex<String>> {
    let text = std::sync::Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut buf);
        sink.lock().unwrap().push_str(&buf);
    });
    text
}

/// Waits for the readiness line, or says why it will not come (the harness exited, closed its
/// output, or took longer than [`READY_TIMEOUT`]).
fn wait_ready(
    child: &mut Child,
    readiness: &mpsc::Receiver<Result<ReadyLine, String>>,
    stderr: &Mutex<String>,
    log: &str,
) -> anyhow::Result<ReadyLine> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match readiness.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(ready)) => return Ok(ready),
            Ok(Err(e)) => anyhow::bail!("the control plane printed a bad readiness line: {e}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    std::thread::sleep(Duration::from_millis(200));
                    anyhow::bail!(
                        "the control plane exited ({status}) before it was ready; stderr:\n{}\nlog: {log}",
                        stderr.lock().unwrap()
                    );
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    anyhow::bail!("the control plane was not ready within {READY_TIMEOUT:?}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                anyhow::bail!(
                    "the control plane closed its output before it was ready; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    }
}

/// Returns the harness binary, building it with `go build` when missing or stale.
pub fn build(harness: &Harness) -> anyhow::Result<PathBuf> {
    build_tool(harness, ".", "control-plane")
}

/// The Go build tags of promtool (`.ci/run` builds it with the same).
pub const PROMTOOL_TAGS: &str = "remove_all_sd";

/// Builds the Go package `package` (relative to the harness module, e.g. `./cmd/kubectl`, or a
/// package of one of its dependencies) into `name` in the build directory, unless its sources
/// are unchanged since the last build.
pub fn build_tool(harness: &Harness, package: &str, name: &str) -> anyhow::Result<PathBuf> {
    // Tests of one binary run on several threads: one build at a time in this process (the
    // others then find it built), and a temporary file of its own for each build.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let src = &harness.source_dir;
    let out_dir = &harness.build_dir;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let binary = out_dir.join(name);
    let stamp = out_dir.join(format!("{name}.fingerprint"));
    let fingerprint = format!(
        "{}{}",
        source_fingerprint(src, &src.join(package))?,
        harness.tags.join(",")
    );
    if binary.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(fingerprint.as_str()) {
        return Ok(binary);
    }

    let go = std::env::var_os("GO").unwrap_or_else(|| "go".into());
    let version = Command::new(&go).arg("version").output();
    if !matches!(&version, Ok(o) if o.status.success()) {
        anyhow::bail!(
            "building {name} needs Go (1.26.7 or newer) to build it from its Go module, and `{}` could not be \
             run: install Go from your distribution or go.dev and make sure `go` is on PATH (or set GO=/path/to/go)",
            go.to_string_lossy()
        );
    }
    eprintln!("building {name} with go build (a cold build takes several minutes)...");
    let started = Instant::now();
    let tmp = out_dir.join(format!(
        "{name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    // No -trimpath: the upstream test server finds its certificate fixtures through its source path.
    let output = Command::new(&go)
        .current_dir(src)
        .env("GOTOOLCHAIN", "local")
        .args(["build", "-buildvcs=false"])
        .args((!harness.tags.is_empty()).then(|| format!("-tags={}", harness.tags.join(","))))
        .arg("-o")
        .arg(&tmp)
        .arg(package)
        .output()
        .context("running go build")?;
    if !output.status.success() {
        anyhow::bail!(
            "go build of {name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, &binary).with_context(|| format!("installing {name}"))?;
    std::fs::write(&stamp, &fingerprint).with_context(|| format!("writing {}", stamp.display()))?;
    eprintln!("built {name} in {:.1}s", started.elapsed().as_secs_f64());
    Ok(binary)
}

/// A hash over a package's Go sources and the module's go.mod and go.sum.
/// The fingerprint of a package of `module`: its Go files (none for a package of a dependency,
/// such as `github.com/prometheus/prometheus/cmd/promtool`, which go.sum pins) and the module's
/// go.mod and go.sum.
fn source_fingerprint(module: &Path, package: &Path) -> anyhow::Result<String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(package) {
        Ok(dir) => dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "go"))
            .collect(),
        Err(_) if !package.starts_with(module) || !package.exists() => Vec::new(),
        Err(e) => anyhow::bail!("reading {}: {e}", package.display()),
    };
    files.sort();
    files.push(module.join("go.mod"));
    files.push(module.join("go.sum"));
    let mut hash = Sha256::new();
    for f in files {
        hash.update(f.file_name().unwrap().as_encoded_bytes());
        hash.update(std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
    }
    Ok(hex::encode(hash.finalize()))
}
