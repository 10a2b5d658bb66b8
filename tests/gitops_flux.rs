//! GitOps for real: Flux's own source-controller and kustomize-controller (built from their Go
//! modules, `tests/flux`, with their CRDs from the same modules) sync RemoteAssistances from a
//! Git repository served by Flux's test Git server to the real control plane, with `wait: true`
//! and `prune: true`, while the operator runs against the simulator. Every step waits on what
//! the objects say (revisions, conditions, counts), never on a clock.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::control_plane::{Harness, build_tool};
use support::operator::{AK, PROJECT, SK, World, condition, eventually, phase};
use support::process::{OperatorProcess, free_port};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::simulator::{Fault, FaultRule};
use workspace_assist::workspace::Operation;

/// A guard against a hang, not a bound on how long a step takes (Flux checks health every 5 s).
const T: Duration = Duration::from_secs(120);
const REPO: &str = "gitops/tickets.git";
const NAME: &str = "tickets";

fn harness() -> Harness {
    Harness::flux(Path::new(env!("CARGO_TARGET_TMPDIR")).join("flux"))
}

fn tool(package: &str, name: &str) -> PathBuf {
    build_tool(&harness(), package, name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Flux's test Git server (`tests/flux/cmd/gitserver`): commits a directory as a new revision.
struct GitServer {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    address: String,
}

impl GitServer {
    async fn start() -> GitServer {
        let git = std::process::Command::new("git").arg("--version").output();
        assert!(
            git.is_ok_and(|o| o.status.success()),
            "the GitOps test needs git on PATH: Flux's test Git server runs `git upload-pack` \
             (DEVELOPMENT.md, Prerequisites)"
        );
        let mut child = tokio::process::Command::new(tool("./cmd/gitserver", "gitserver"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the git server");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Its log (a line per request) is read as it comes, so that a full pipe never blocks it.
        let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
        let (first_words, heard) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            let mut first_words = Some(first_words);
            while let Ok(Some(line)) = log.next_line().await {
                if let Some(tx) = first_words.take() {
                    let _ = tx.send(line);
                }
            }
        });
        let Some(first) = lines.next_line().await.unwrap() else {
            let said = tokio::time::timeout(Duration::from_secs(5), heard).await;
            panic!(
                "the git server did not start: {}",
                said.ok().and_then(Result::ok).unwrap_or_default()
            );
        };
        let address = first.strip_prefix("ADDR ").expect("ADDR <url>").to_string();
        GitServer {
            child,
            stdin,
            lines,
            address,
        }
    }

    /// Makes the repository hold exactly `files` (name → YAML), as one commit; its SHA.
    async fn commit(&mut self, files: &[(&str, Value)], message: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        for (name, manifest) in files {
            std::fs::write(dir.path().join(name), serde_yaml::to_string(manifest).unwrap()).unwrap();
        }
        let command = format!("commit {REPO} {} {message}\n", dir.path().display());
        self.stdin.write_all(command.as_bytes()).await.unwrap();
        let answer = self.lines.next_line().await.unwrap().expect("an answer");
        answer
            .strip_prefix("OK ")
            .unwrap_or_else(|| panic!("commit failed: {answer}"))
            .to_string()
    }
}

/// source-controller and kustomize-controller, watching the test's namespace only.
struct Flux {
    source: OperatorProcess,
    kustomize: OperatorProcess,
    _storage: tempfile::TempDir,
}

impl Flux {
    async fn start(client: &Client, namespace: &str) -> Flux {
        let source_bin = tool("github.com/fluxcd/source-controller", "source-controller");
        let kustomize_bin = tool("github.com/fluxcd/kustomize-controller", "kustomize-controller");
        install_flux_crds(client).await;
        let cp = support::control_plane::shared();
        let storage = tempfile::tempdir().unwrap();
        let artifacts = format!("127.0.0.1:{}", free_port());
        let start = |binary: &Path, extra: Vec<String>| {
            let health: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut command = tokio::process::Command::new(binary);
            command
                .env("KUBECONFIG", &cp.kubeconfig)
                .env("RUNTIME_NAMESPACE", namespace)
                .args([
                    "--watch-all-namespaces=false",
                    "--enable-leader-election=false",
                    "--log-level=debug",
                ])
                .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
                .arg(format!("--health-addr={health}"))
                .args(extra);
            OperatorProcess::start(command, health)
        };
        let source = start(
            &source_bin,
            vec![
                format!("--storage-addr={artifacts}"),
                format!("--storage-adv-addr={artifacts}"),
                format!("--storage-path={}", storage.path().display()),
            ],
        );
        let kustomize = start(&kustomize_bin, Vec::new());
        Flux {
            source,
            kustomize,
            _storage: storage,
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- source-controller\n{}\n--- kustomize-controller\n{}",
            tail(&self.source.logs()),
            tail(&self.kustomize.logs())
        )
    }
}

fn tail(logs: &str) -> &str {
    let cut = logs.len().saturating_sub(6000);
    let cut = (cut..logs.len()).find(|i| logs.is_char_boundary(*i)).unwrap_or(0);
    &logs[cut..]
}

/// The CRDs shipped in the controllers' own Go modules.
async fn install_flux_crds(client: &Client) {
    for module in [
        "github.com/fluxcd/source-controller",
        "github.com/fluxcd/kustomize-controller",
    ] {
        let dir = harness()
            .module_dir(module)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .join("config/crd/bases");
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            support::install_crd(client, &crd).await;
        }
    }
}

fn api(client: &Client, namespace: &str, group: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, "v1", kind);
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// The test's Flux objects and the helpers that read them.
struct Sync {
    repos: Api<DynamicObject>,
    kustomizations: Api<DynamicObject>,
    requests: u32,
}

fn ready(object: &DynamicObject) -> Option<(String, String, String)> {
    let conditions = object.data["status"]["conditions"].as_array()?;
    let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
    Some((
        ready["status"].as_str()?.to_string(),
        ready["reason"].as_str().unwrap_or("").to_string(),
        ready["message"].as_str().unwrap_or("").to_string(),
    ))
}

impl Sync {
    async fn create(client: &Client, namespace: &str, url: &str) -> Sync {
        let repos = api(
            client,
            namespace,
            "source.toolkit.fluxcd.io",
            "GitRepository",
            "gitrepositories",
        );
        let kustomizations = api(
            client,
            namespace,
            "kustomize.toolkit.fluxcd.io",
            "Kustomization",
            "kustomizations",
        );
        let apply = PatchParams::apply("gitops-test").force();
        let repo = json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": { "name": NAME },
            // Long intervals: the test asks for each reconcile itself.
            "spec": { "interval": "10m", "url": url, "ref": { "branch": "master" } },
        });
        repos.patch(NAME, &apply, &Patch::Apply(&repo)).await.unwrap();
        let kustomization = json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": { "name": NAME },
            "spec": {
                "interval": "10m", "retryInterval": "2s", "timeout": "30s",
                "path": "./", "prune": true, "wait": true, "targetNamespace": namespace,
                "sourceRef": { "kind": "GitRepository", "name": NAME },
            },
        });
        kustomizations
            .patch(NAME, &apply, &Patch::Apply(&kustomization))
            .await
            .unwrap();
        Sync {
            repos,
            kustomizations,
            requests: 0,
        }
    }

    /// Asks Flux to reconcile the GitRepository (`"source"`) or the Kustomization now (`reconcile.fluxcd.io/requestedAt`, as
    /// `flux reconcile` does) and returns the token it will report as handled.
    async fn request(&mut self, which: &str) -> String {
        self.requests += 1;
        let token = format!("test-{}", self.requests);
        let api = if which == "source" {
            &self.repos
        } else {
            &self.kustomizations
        };
        api.patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}})),
        )
        .await
        .unwrap();
        token
    }

    async fn kustomization(&self) -> DynamicObject {
        self.kustomizations.get(NAME).await.unwrap()
    }

    /// Fetches `sha` and waits until the Kustomization has attempted it and `done` holds.
    async fn sync_to(
        &mut self,
        sha: &str,
        flux: &Flux,
        what: &str,
        done: impl Fn(&DynamicObject) -> bool,
    ) -> DynamicObject {
        self.request("source").await;
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let k = self.kustomization().await;
            let attempted = k.data["status"]["lastAttemptedRevision"].as_str().unwrap_or("");
            if attempted.ends_with(sha) && done(&k) {
                return k;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Kustomization: not {what} at {sha}; last: {}\n{}",
                serde_json::to_string_pretty(&k.data["status"]).unwrap(),
                flux.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks for a reconcile of the Kustomization and waits until it handled it (and, with
    /// `ready`, is Ready).
    async fn resync(&mut self, flux: &Flux, ready_too: bool) -> DynamicObject {
        let token = self.request("kustomization").await;
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let k = self.kustomization().await;
            if k.data["status"]["lastHandledReconcileAt"] == token.as_str() && (!ready_too || is_ready(&k)) {
                return k;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Kustomization did not handle {token}: {}\n{}",
                serde_json::to_string_pretty(&k.data["status"]).unwrap(),
                flux.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn is_ready(k: &DynamicObject) -> bool {
    ready(k).is_some_and(|(status, _, _)| status == "True")
}

/// When the condition `type_` of `conditions` last changed.
fn transition(conditions: &Value, type_: &str) -> String {
    conditions
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The time of kustomize-controller's last apply that changed the object (managedFields).
fn flux_apply_time(ra: &RemoteAssistance) -> Option<String> {
    ra.managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("kustomize-controller"))
        .and_then(|m| m.time.as_ref())
        .map(|t| t.0.to_string())
}

#[tokio::test]
async fn flux_applies_waits_for_health_prunes_and_the_operator_cancels_what_git_removed() {
    let mut w = World::new("flux").await;
    let ns = w.namespace.clone();
    let mut git = GitServer::start().await;
    let flux = Flux::start(&w.client, &ns).await;
    w.start_operator(w.config());
    w.put_secret(
        "rotating-key",
        &[("accessKeyId", AK), ("secretAccessKey", "not-the-key")],
    )
    .await;
    let ticket = |name: &str, desktop: &str| {
        let mut m = w.manifest(name, desktop);
        m["metadata"].as_object_mut().unwrap().remove("namespace");
        m
    };

    // 1. A commit adding a ticket: applied, the session started, and the Kustomization Ready
    // only once the ticket is. Its first Shows fail, so it is not Ready at once.
    w.sim.inject(FaultRule::new(
        "desk-a",
        Operation::ShowDesktopRemoteAssistanceInfo,
        vec![Fault::error(503, "APIGW.0308", "throttled"); 3],
    ));
    let a = ticket("ticket-a", "desk-a");
    let sha = git.commit(&[("ticket-a.yaml", a.clone())], "ticket a").await;
    let mut sync = Sync::create(&w.client, &ns, &format!("{}/{REPO}", git.address)).await;
    let k = sync.sync_to(&sha, &flux, "Ready", is_ready).await;
    let ra = w.api().get("ticket-a").await.unwrap();
    assert_eq!(phase(&ra), Some(Phase::Active));
    assert_eq!(w.sim.count(Operation::CreateRemoteAssistance, "desk-a"), 1);
    let ra_ready = transition(&serde_json::to_value(&ra.status).unwrap()["conditions"], "Ready");
    let flux_healthy = transition(&k.data["status"]["conditions"], "Healthy");
    assert!(
        !ra_ready.is_empty() && flux_healthy >= ra_ready,
        "Healthy at {flux_healthy}, the ticket Ready at {ra_ready}"
    );
    println!("ticket-a Ready at {ra_ready}, the Kustomization Healthy at {flux_healthy}");

    // 2. A ticket with a wrong key: the health check fails on it (Stalled is kstatus's Failed),
    // naming it; the reason is on the ticket. Fixing the key lets the next retry pass.
    let mut b = ticket("ticket-b", "desk-b");
    b["spec"]["credentialsSecretRef"]["name"] = json!("rotating-key");
    let sha = git
        .commit(
            &[("ticket-a.yaml", a.clone()), ("ticket-b.yaml", b.clone())],
            "ticket b",
        )
        .await;
    let k = sync
        .sync_to(&sha, &flux, "failing its health check", |k| {
            ready(k).is_some_and(|(s, reason, _)| s == "False" && reason == "HealthCheckFailed")
        })
        .await;
    let (_, _, message) = ready(&k).unwrap();
    println!("the Kustomization with a wrong key: {message}");
    assert!(
        message.contains(&format!("RemoteAssistance/{ns}/ticket-b status: 'Failed'")),
        "{message}"
    );
    let b_ra = w.api().get("ticket-b").await.unwrap();
    assert_eq!(condition(&b_ra, "Stalled").as_deref(), Some("True"));
    w.put_secret("rotating-key", &[("accessKeyId", AK), ("secretAccessKey", SK)])
        .await;
    sync.sync_to(&sha, &flux, "Ready after the key was fixed", is_ready)
        .await;
    assert_eq!(w.sim.count(Operation::CreateRemoteAssistance, "desk-b"), 1);

    // 3. A commit removing ticket-a: pruned, held by its finalizer until the cancel, exactly
    // one cancel, and Ready again.
    let sha = git.commit(&[("ticket-b.yaml", b.clone())], "ticket a done").await;
    sync.sync_to(&sha, &flux, "Ready without ticket-a", is_ready)
        .await;
    eventually(T, "ticket-a gone", || async {
        w.api().get_opt("ticket-a").await.unwrap().is_none()
    })
    .await;
    assert_eq!(w.sim.count(Operation::CancelRemoteAssistance, "desk-a"), 1);
    assert!(!w.sim.session(PROJECT, "desk-a").unwrap().in_progress());

    // 4. The operator's writes (finalizer, status) are no drift: three more reconciles apply
    // nothing to ticket-b and report nothing configured.
    let before = flux_apply_time(&w.api().get("ticket-b").await.unwrap());
    assert!(before.is_some(), "kustomize-controller applied ticket-b");
    for _ in 0..3 {
        sync.resync(&flux, true).await;
    }
    let after = flux_apply_time(&w.api().get("ticket-b").await.unwrap());
    assert_eq!(before, after, "kustomize-controller changed nothing on ticket-b");
    let events: Api<Event> = Api::namespaced(w.client.clone(), &ns);
    let notes: Vec<String> = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={NAME}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    let configured = notes
        .iter()
        .filter(|n| n.contains(&format!("RemoteAssistance/{ns}/ticket-b configured")))
        .count();
    assert_eq!(configured, 0, "no re-apply of ticket-b: {notes:#?}");
    assert_eq!(w.sim.count(Operation::CreateRemoteAssistance, "desk-b"), 1);

    // 5. maxDuration in Git: cancelled at its deadline, and it stays so across syncs.
    let mut c = ticket("ticket-c", "desk-c");
    c["spec"]["maxDuration"] = json!("3s");
    let sha = git
        .commit(
            &[("ticket-b.yaml", b.clone()), ("ticket-c.yaml", c.clone())],
            "ticket c",
        )
        .await;
    sync.sync_to(&sha, &flux, "Ready with ticket-c", is_ready).await;
    w.wait_for("ticket-c", T, "Cancelled at its deadline", |ra| {
        phase(ra) == Some(Phase::Cancelled)
    })
    .await;
    for _ in 0..2 {
        sync.resync(&flux, true).await;
    }
    let c_ra = w.api().get("ticket-c").await.unwrap();
    assert_eq!(
        phase(&c_ra),
        Some(Phase::Cancelled),
        "stays Cancelled across syncs"
    );
    assert_eq!(
        w.sim.count(Operation::CreateRemoteAssistance, "desk-c"),
        1,
        "no new session"
    );
    let first_uid = c_ra.uid().unwrap();

    // 6. ttlAfterFinished with the manifest still in Git: the TTL deletes the object, Flux's
    // next sync applies it again as a new object, and that one starts a new session (what the
    // README warns of).
    c["spec"]["ttlAfterFinished"] = json!("1s");
    let sha = git
        .commit(
            &[("ticket-b.yaml", b.clone()), ("ticket-c.yaml", c.clone())],
            "ticket c ttl",
        )
        .await;
    sync.sync_to(&sha, &flux, "applied with the TTL", |_| true).await;
    eventually(T, "ticket-c deleted by its TTL", || async {
        w.api()
            .get_opt("ticket-c")
            .await
            .unwrap()
            .is_none_or(|ra| ra.uid().as_deref() != Some(first_uid.as_str()))
    })
    .await;
    // The sync that applied the TTL may pass (the ticket was Cancelled, so Current) or time out
    // on the ticket NotFound, depending on when the TTL fell; either way the next sync applies
    // the manifest again.
    let k = sync.resync(&flux, false).await;
    println!("after the TTL deleted ticket-c, the next sync: {:?}", ready(&k));
    // (The new object may already have met its own deadline and TTL: the simulator counts.)
    if let Some(again) = w.api().get_opt("ticket-c").await.unwrap() {
        assert_ne!(again.uid().as_deref(), Some(first_uid.as_str()), "a new object");
    }
    eventually(T, "a second session for desk-c", || async {
        w.sim.count(Operation::CreateRemoteAssistance, "desk-c") >= 2
    })
    .await;
    println!("ttlAfterFinished in Git: deleted, re-applied by Flux, and a new session started");

    // Deleting the Kustomization prunes the rest; the operator cancels each once.
    let sync_api = sync.kustomizations.clone();
    sync_api.delete(NAME, &Default::default()).await.unwrap();
    for name in ["ticket-b", "ticket-c"] {
        w.wait_gone(name, T).await;
    }
    assert_eq!(w.sim.count(Operation::CancelRemoteAssistance, "desk-b"), 1);
    eventually(T, "the Kustomization gone", || async {
        sync_api.get_opt(NAME).await.unwrap().is_none()
    })
    .await;
    let _ = sync.repos.delete(NAME, &Default::default()).await;
    w.stop_operator().await;
    let _ = git.child.kill().await;
}
