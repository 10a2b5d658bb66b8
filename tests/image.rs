//! The container image users run: built with podman from the Dockerfile's final stage and the
//! binary its build line makes, then started as the Deployment starts it (UID 65532, read-only
//! root, `/workspace-assist run`) against the test control plane and the simulator. It becomes
//! leader, serves /healthz, /readyz and /metrics, cancels a RemoteAssistance, and exits cleanly
//! on SIGTERM.
//!
//! Podman here cannot start containers (the machine's runtime refuses to set rlimits), so the
//! image's own root filesystem is taken out of podman's storage and its entrypoint started in
//! it with chroot as 65532, in a mount namespace where that root is read-only and /dev and /proc
//! are mounted, as a container runtime mounts them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use support::operator::World;
use support::process::{OperatorProcess, free_port};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::workspace::Operation;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const T: Duration = Duration::from_secs(60);
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// podman with storage of the test's own (vfs: no kernel overlay needed).
fn podman(store: &Path) -> Command {
    let mut c = Command::new(support::debian::tool("podman", "podman"));
    c.arg("--storage-driver")
        .arg("vfs")
        .arg("--root")
        .arg(store.join("storage"))
        .arg("--runroot")
        .arg(store.join("run"));
    c
}

fn run(mut command: Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (podman comes from Debian's podman package)"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds the image and returns (its name, its inspect JSON).
fn build_image(store: &Path) -> (String, serde_json::Value) {
    let context = store.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(
        support::shipped::shipped_binary(),
        context.join("workspace-assist"),
    )
    .unwrap();
    std::fs::copy(CA_BUNDLE, context.join("ca-certificates.crt"))
        .unwrap_or_else(|e| panic!("{CA_BUNDLE}: {e} (Debian's ca-certificates package)"));
    let name = "localhost/workspace-assist:test".to_string();
    let mut build = podman(store);
    build
        .args(["build", "--build-arg", "BINARY=prebuilt", "-t", &name, "-f"])
        .arg(Path::new(ROOT).join("Dockerfile"))
        .arg(&context);
    run(build, "podman build");
    let mut inspect = podman(store);
    inspect.args(["image", "inspect", &name]);
    let json: serde_json::Value = serde_json::from_str(&run(inspect, "podman image inspect")).unwrap();
    (name, json[0].clone())
}

/// The image's root filesystem, copied out of podman's storage, with a /config directory for
/// the kubeconfig (the Deployment mounts its service account the same way).
fn root_filesystem(store: &Path, image: &str, kubeconfig: &Path) -> PathBuf {
    let mut mount = podman(store);
    mount.args(["image", "mount", image]);
    let mounted = run(mount, "podman image mount");
    let root = store.join("rootfs");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{mounted}/."))
        .arg(&root)
        .status()
        .unwrap();
    let mut unmount = podman(store);
    unmount.args(["image", "unmount", image]);
    run(unmount, "podman image unmount");
    assert!(copied.success());
    std::fs::create_dir_all(root.join("config")).unwrap();
    // Mount points for what a container runtime provides: /dev (random numbers) and /proc.
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::copy(kubeconfig, root.join("config/kubeconfig")).unwrap();
    // Readable by 65532, as a mounted ServiceAccount token is.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("config/kubeconfig"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    root
}

#[tokio::test]
async fn the_image_leads_cancels_serves_health_and_metrics_and_stops_on_sigterm() {
    let store = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (image, inspect) = build_image(store.path());
    let config = &inspect["Config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/workspace-assist"]));
    assert_eq!(config["Cmd"], serde_json::json!(["run"]));
    let size = inspect["Size"].as_u64().unwrap();
    println!("image size: {:.1} MB ({size} bytes)", size as f64 / 1e6);
    assert!(
        size <= 25_000_000,
        "the image is {:.1} MB, over its 25 MB target",
        size as f64 / 1e6
    );

    let w = World::new("image").await;
    let cp = support::control_plane::shared();
    let root = root_filesystem(store.path(), &image, &cp.kubeconfig);
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // As the Deployment runs it: entrypoint and command from the image, as 65532, root read-only.
    let entrypoint: Vec<String> = serde_json::from_value(config["Entrypoint"].clone()).unwrap();
    let cmd: Vec<String> = serde_json::from_value(config["Cmd"].clone()).unwrap();
    let args = [
        "--namespace",
        &w.namespace,
        "--leader-election-namespace",
        &w.namespace,
        "--instance-name",
        "image",
        "--metrics-address",
        &metrics.to_string(),
        "--allowed-endpoint",
        &w.sim.endpoint(),
    ]
    .join(" ");
    let r = root.display();
    let script = format!(
        "mount --bind {r} {r} && mount -o remount,bind,ro {r} && mount --rbind /dev {r}/dev && mount -t proc proc {r}/proc \
         && exec chroot --userspec=65532:65532 {r} {} {} {args}",
        entrypoint.join(" "),
        cmd.join(" ")
    );
    let mut command = tokio::process::Command::new("unshare");
    command
        .args(["--mount", "--fork", "sh", "-c", &script])
        .env_clear()
        .env("KUBECONFIG", "/config/kubeconfig")
        .env("LOG_FORMAT", "json");
    let mut op = OperatorProcess::start(command, metrics);

    op.wait_http("/healthz", 200, T).await;
    op.wait_http("/readyz", 200, T).await;
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), &w.namespace);
    support::operator::eventually(T, "the image's operator leads", || async {
        leases
            .get_opt("workspace-assist")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .as_deref()
            == Some("image")
    })
    .await;
    w.create(w.manifest("from-image", "from-image")).await;
    w.wait_for("from-image", T, "Active", |ra: &RemoteAssistance| {
        ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
    })
    .await;
    w.delete("from-image").await;
    w.wait_gone("from-image", T).await;
    assert_eq!(
        w.sim.count(Operation::CancelRemoteAssistance, "from-image"),
        1,
        "cancelled once"
    );
    let (status, text) = op.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("workspace_assist_leader 1"), "{text}");
    // It runs as 65532, in the image's root, which is read-only.
    let child = run(
        {
            let mut c = Command::new("pgrep");
            c.args(["-P", &op.pid().to_string()]);
            c
        },
        "pgrep",
    );
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().skip(1).all(|u| u == "65532")),
        "{status}"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{child}/mounts")).unwrap();
    // (Mount points are shown relative to the process's root: the image's root is "/".)
    let root_mount = mounts
        .lines()
        .rfind(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("{mounts}"));
    assert!(
        root_mount
            .split_whitespace()
            .nth(3)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "the root is read-only: {root_mount}"
    );

    // SIGTERM to the operator (the child of unshare): it stops cleanly and gives up the Lease.
    let killed = Command::new("pkill")
        .args(["-TERM", "-P", &op.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "signalled the operator");
    let exit = op.wait(T).await;
    assert!(
        exit.success(),
        "the operator exits cleanly on SIGTERM: {exit}\n{}",
        op.logs()
    );
    let holder = leases
        .get("workspace-assist")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(holder.is_empty(), "the Lease is released: {holder:?}");
}
