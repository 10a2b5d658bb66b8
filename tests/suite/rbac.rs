//! The ClusterRole and Role in deploy/ are sufficient and minimal: the operator runs under its
//! own ServiceAccount's token (TokenRequest API) with only those rules bound, through the whole
//! lifecycle; and with any one rule removed it fails, visibly (a "forbidden" in its logs).

use crate::support;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::operator::{PROJECT, SECRET, World};
use support::process::OperatorProcess;
use workspace_assist::resource::{Phase, RemoteAssistance, SECRET_FINALIZER};
use workspace_assist::simulator::{Fault, FaultRule};
use workspace_assist::workspace::Operation;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const STEP: Duration = Duration::from_secs(12);

/// Which rule to leave out.
#[derive(Clone, Copy, Debug)]
enum Without {
    Nothing,
    ClusterRule(usize),
    LeaseRule(usize),
}

fn yaml_docs(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(PathBuf::from(ROOT).join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn cluster_rules() -> usize {
    yaml_docs("deploy/base/clusterrole.yaml")[0]["rules"]
        .as_sequence()
        .unwrap()
        .len()
}

fn lease_rules() -> usize {
    yaml_docs("deploy/base/leader-election-role.yaml")[0]["rules"]
        .as_sequence()
        .unwrap()
        .len()
}

/// Binds deploy/'s roles (less one rule, maybe) to a ServiceAccount of the world's namespace and
/// returns a kubeconfig holding that ServiceAccount's token.
async fn install_rbac(w: &World, without: Without, dir: &std::path::Path) -> PathBuf {
    let ns = &w.namespace;
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "workspace-assist" } })).unwrap();
    Api::<ServiceAccount>::namespaced(w.client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();

    let mut role: ClusterRole =
        serde_yaml::from_value(yaml_docs("deploy/base/clusterrole.yaml").remove(0)).unwrap();
    role.metadata.name = Some(format!("workspace-assist-{ns}"));
    if let Without::ClusterRule(i) = without {
        role.rules.as_mut().unwrap().remove(i);
    }
    Api::<ClusterRole>::all(w.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    bind_to_operator(w, &format!("workspace-assist-{ns}")).await;

    let docs = yaml_docs("deploy/base/leader-election-role.yaml");
    let mut lease_role: Role = serde_yaml::from_value(docs[0].clone()).unwrap();
    if let Without::LeaseRule(i) = without {
        lease_role.rules.as_mut().unwrap().remove(i);
    }
    Api::<Role>::namespaced(w.client.clone(), ns)
        .create(&PostParams::default(), &lease_role)
        .await
        .unwrap();
    let mut lease_binding: RoleBinding = serde_yaml::from_value(docs[1].clone()).unwrap();
    lease_binding.subjects.as_mut().unwrap()[0].namespace = Some(ns.clone());
    Api::<RoleBinding>::namespaced(w.client.clone(), ns)
        .create(&PostParams::default(), &lease_binding)
        .await
        .unwrap();

    // A real ServiceAccount token, as a pod would mount it.
    let request = json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": { "expirationSeconds": 3600 } });
    let answer: serde_json::Value = Api::<ServiceAccount>::namespaced(w.client.clone(), ns)
        .create_subresource("token", "workspace-assist", &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    let token = answer["status"]["token"].as_str().expect("a token").to_string();
    let cp = support::control_plane::shared();
    let mut kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cp.kubeconfig).unwrap()).unwrap();
    kubeconfig["users"][0]["user"] = serde_yaml::to_value(json!({ "token": token })).unwrap();
    let path = dir.join(format!("kubeconfig-{ns}"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

async fn step(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("not {what} within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn get(w: &World, name: &str) -> Option<RemoteAssistance> {
    w.api().get_opt(name).await.unwrap()
}

fn phase(ra: &Option<RemoteAssistance>) -> Option<Phase> {
    ra.as_ref().and_then(|r| r.status.as_ref()).and_then(|s| s.phase)
}

/// The core lifecycle; every step needs some of the rules.
async fn lifecycle(w: &World) -> Result<(), String> {
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), &w.namespace);
    step("holding the leader Lease", STEP, async || {
        leases
            .get_opt("workspace-assist")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| h == "rbac")
    })
    .await?;

    w.create(w.manifest("one", "desk-one")).await;
    step("Active with its invitation Secret", STEP, async || {
        get(w, "one").await.is_some_and(|ra| {
            ra.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(Phase::Active) && s.invitation_secret_name.is_some())
        })
    })
    .await?;
    step("the credentials Secret pinned", STEP, async || {
        w.secret(SECRET)
            .await
            .is_some_and(|s| s.finalizers().iter().any(|f| f == SECRET_FINALIZER))
    })
    .await?;
    let events: Api<Event> = Api::namespaced(w.client.clone(), &w.namespace);
    step("Events published", STEP, async || {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| e.reporting_controller.as_deref() == Some("workspace-assist"))
    })
    .await?;

    // A repeated failure: the second identical Event patches the first into a series.
    w.sim.inject(FaultRule::new(
        "desk-two",
        Operation::ShowDesktopRemoteAssistanceInfo,
        vec![Fault::error(500, "WKS.00000001", "internal"); 2],
    ));
    w.create(w.manifest("two", "desk-two")).await;
    step("a repeated Event counted as a series", STEP, async || {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
    })
    .await?;

    w.patch_spec("one", json!({ "cancelled": true })).await.unwrap();
    step("Cancelled with its invitation Secret deleted", STEP, async || {
        let ra = get(w, "one").await;
        phase(&ra) == Some(Phase::Cancelled) && w.secret("one-invitation").await.is_none()
    })
    .await?;

    w.delete("two").await;
    step("deleted after its cancel", STEP, async || {
        get(w, "two").await.is_none()
    })
    .await?;

    // A finished resource goes once its ttlAfterFinished has passed.
    let mut three = w.manifest("three", "desk-three");
    three["spec"]["cancelled"] = json!(true);
    three["spec"]["ttlAfterFinished"] = json!("1s");
    w.create(three).await;
    step("deleted after its ttlAfterFinished", STEP, async || {
        get(w, "three").await.is_none()
    })
    .await?;
    if w.sim.count(Operation::CancelRemoteAssistance, "desk-two") != 1 {
        return Err("desk-two was not cancelled exactly once".into());
    }
    // The leader keeps its Lease: renewed since it was acquired, and still held.
    step("the leader Lease renewed", STEP, async || {
        let spec = leases
            .get_opt("workspace-assist")
            .await
            .unwrap()
            .and_then(|l| l.spec);
        spec.is_some_and(|s| {
            s.holder_identity.as_deref() == Some("rbac")
                && s.renew_time.as_ref().map(|t| t.0) > s.acquire_time.as_ref().map(|t| t.0)
        })
    })
    .await?;
    Ok(())
}

async fn run_case(without: Without, dir: &std::path::Path) -> (Result<(), String>, String) {
    let w = World::new("rbac").await;
    w.sim.open_session(PROJECT, "desk-unused");
    let kubeconfig = install_rbac(&w, without, dir).await;
    let endpoint = w.sim.endpoint();
    let op = OperatorProcess::spawn(
        &kubeconfig,
        &[
            "--namespace",
            &w.namespace,
            "--leader-election-namespace",
            &w.namespace,
            "--instance-name",
            "rbac",
            "--backoff-base",
            "200ms",
            "--backoff-max",
            "1s",
            "--needs-human-recheck",
            "2s",
            "--allowed-endpoint",
            &endpoint,
            // Renewals every half second, so that the lifecycle needs them too.
            "--lease-duration",
            "4s",
            "--lease-renew-before",
            "1s",
        ],
    );
    let result = lifecycle(&w).await;
    (result, op.logs())
}

#[tokio::test]
async fn the_deployed_roles_are_sufficient() {
    let dir = tempfile::tempdir().unwrap();
    let (result, logs) = run_case(Without::Nothing, dir.path()).await;
    assert!(result.is_ok(), "{result:?}\nlogs:\n{logs}");
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "no request was forbidden:\n{logs}"
    );
}

#[tokio::test]
async fn every_rule_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<Without> = (0..cluster_rules()).map(Without::ClusterRule).collect();
    cases.extend((0..lease_rules()).map(Without::LeaseRule));
    let results = futures::future::join_all(cases.iter().map(|c| run_case(*c, dir.path()))).await;
    let mut unused = Vec::new();
    for (case, (result, logs)) in cases.iter().zip(results) {
        match result {
            Ok(()) => unused.push(format!("{case:?}: the lifecycle completed without it")),
            Err(step) if !logs.to_lowercase().contains("forbidden") => unused.push(format!(
                "{case:?}: failed ({step}) but nothing in the logs says forbidden"
            )),
            Err(step) => println!("{case:?}: fails visibly ({step})"),
        }
    }
    assert!(
        unused.is_empty(),
        "rules not shown necessary:\n{}",
        unused.join("\n")
    );
}

/// The index of the ClusterRole rule granting exactly `verbs` on `resource`.
fn rule_index(resource: &str, verbs: &[&str]) -> usize {
    let docs = yaml_docs("deploy/base/clusterrole.yaml");
    let rules = docs[0]["rules"].as_sequence().unwrap();
    rules
        .iter()
        .position(|r| {
            r["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|x| x.as_str() == Some(resource))
                && r["verbs"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect::<Vec<_>>()
                    == verbs
        })
        .unwrap_or_else(|| panic!("no rule for {verbs:?} {resource}"))
}

/// Runs the operator with one rule left out, and returns it with the world.
async fn operator_without(rule: usize, dir: &std::path::Path) -> (World, OperatorProcess) {
    let w = World::new("rbac").await;
    let kubeconfig = install_rbac(&w, Without::ClusterRule(rule), dir).await;
    let endpoint = w.sim.endpoint();
    let args = [
        "--namespace",
        &w.namespace,
        "--leader-elect",
        "false",
        "--backoff-base",
        "200ms",
        "--needs-human-recheck",
        "2s",
        "--allowed-endpoint",
        &endpoint,
    ];
    let op = OperatorProcess::spawn(&kubeconfig, &args);
    (w, op)
}

/// The resource shows a Kubernetes failure naming the verb and the object: a condition, a
/// Warning Event, and the metric.
async fn shows_kubernetes_failure(
    w: &World,
    op: &OperatorProcess,
    name: &str,
    condition_type: &str,
    needle: &str,
    verb: &str,
    kind: &str,
) {
    let ra = w
        .wait_for(
            name,
            Duration::from_secs(30),
            &format!("{condition_type} naming {needle}"),
            |ra| {
                ra.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == condition_type
                            && c.status == "False"
                            && c.reason == "KubernetesForbidden"
                            && c.message.contains(needle)
                    })
                })
            },
        )
        .await;
    assert!(
        ra.metadata.deletion_timestamp.is_none() || support::operator::has_finalizer(&ra),
        "{name}: held while it cannot be done"
    );
    support::operator::eventually(Duration::from_secs(30), "a Warning Event naming it", || async {
        w.event_notes(name).await.iter().any(|n| n.contains(needle))
    })
    .await;
    let metric = format!(
        r#"workspace_assist_kubernetes_errors_total{{verb="{verb}",kind="{kind}",http_status="403"}}"#
    );
    support::operator::eventually(Duration::from_secs(30), "the metric", || async {
        op.get("/metrics").await.1.contains(&metric)
    })
    .await;
}

#[tokio::test]
async fn a_forbidden_kubernetes_call_shows_on_the_resource() {
    let dir = tempfile::tempdir().unwrap();

    // The invitation Secret cannot be deleted: the cancel is confirmed in the cloud, and the
    // resource says why it is not done.
    let (w, op) = operator_without(rule_index("secrets", &["delete"]), dir.path()).await;
    w.create(w.manifest("ra", "desk-invitation")).await;
    w.wait_for("ra", Duration::from_secs(30), "Active", |ra| {
        ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
    })
    .await;
    w.patch_spec("ra", json!({ "cancelled": true })).await.unwrap();
    shows_kubernetes_failure(&w, &op, "ra", "Synced", "delete Secret", "delete", "Secret").await;
    assert!(
        !w.sim.session(PROJECT, "desk-invitation").unwrap().in_progress(),
        "the cancel itself was confirmed"
    );

    // The credentials Secret cannot be pinned: the session still starts, and the resource says
    // that the namespace-deletion protection is off.
    let (w, op) = operator_without(rule_index("secrets", &["patch"]), dir.path()).await;
    w.create(w.manifest("ra", "desk-pin")).await;
    shows_kubernetes_failure(
        &w,
        &op,
        "ra",
        "CredentialsPinned",
        "patch Secret",
        "patch",
        "Secret",
    )
    .await;
    assert!(
        w.event_reasons("ra", Some("Warning"))
            .await
            .contains(&"CredentialsPinFailed".to_string())
    );

    // The namespace cannot be read for its deletion policy: the deletion waits, visibly.
    let (w, op) = operator_without(rule_index("namespaces", &["get", "list", "watch"]), dir.path()).await;
    w.create(w.manifest("ra", "desk-ns")).await;
    w.wait_for("ra", Duration::from_secs(30), "Active", |ra| {
        ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
    })
    .await;
    w.delete("ra").await;
    shows_kubernetes_failure(&w, &op, "ra", "Synced", "get Namespace", "get", "Namespace").await;
}

fn agency_rules() -> Vec<serde_yaml::Value> {
    yaml_docs("deploy/components/agency-bindings/clusterrole.yaml")[0]["rules"]
        .as_sequence()
        .unwrap()
        .clone()
}

/// Binds the agency-bindings component's ClusterRole (less rule `without`, maybe) to the
/// world's operator ServiceAccount.
async fn install_agency_rbac(w: &World, without: Option<usize>) {
    let ns = &w.namespace;
    let mut role: ClusterRole =
        serde_yaml::from_value(yaml_docs("deploy/components/agency-bindings/clusterrole.yaml").remove(0))
            .unwrap();
    let name = format!("workspace-assist-agency-{ns}");
    role.metadata.name = Some(name.clone());
    if let Some(i) = without {
        role.rules.as_mut().unwrap().remove(i);
    }
    Api::<ClusterRole>::all(w.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    bind_to_operator(w, &name).await;
}

/// Binds the ClusterRole `role` to the world's operator ServiceAccount (a ClusterRoleBinding of
/// the same name).
async fn bind_to_operator(w: &World, role: &str) {
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": role },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": [{ "kind": "ServiceAccount", "name": "workspace-assist", "namespace": w.namespace }],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(w.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// The bindings' loop with the base roles and the agency-bindings rules (less one, maybe): a
/// binding gets its finalizer and status, and goes when deleted (no resource uses it).
async fn run_agency_case(without: Option<usize>, dir: &std::path::Path) -> (Result<(), String>, String) {
    use workspace_assist::agency_binding::{AgencyBinding, BINDING_FINALIZER};
    let w = World::new("rbac-agency").await;
    let kubeconfig = install_rbac(&w, Without::Nothing, dir).await;
    install_agency_rbac(&w, without).await;
    let endpoint = w.sim.endpoint();
    let selector = format!("rbac-agency={}", w.namespace);
    let op = OperatorProcess::spawn(
        &kubeconfig,
        &[
            "--namespace",
            &w.namespace,
            "--leader-elect",
            "false",
            "--allowed-endpoint",
            &endpoint,
            "--agency-bindings",
            "true",
            "--agency-binding-selector",
            &selector,
        ],
    );
    let bindings: Api<AgencyBinding> = Api::all(w.client.clone());
    let name = format!("{}-binding", w.namespace);
    let binding: AgencyBinding = serde_json::from_value(json!({
        "apiVersion": "workspace.assist.dev/v1alpha1", "kind": "AgencyBinding",
        "metadata": { "name": name, "labels": { "rbac-agency": w.namespace } },
        "spec": {
            "domainId": "d-rbac", "agencyName": "workspace-assist",
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": w.namespace } },
        },
    }))
    .unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    let result = async {
        step("the binding held, with its status", STEP, async || {
            bindings.get_opt(&name).await.unwrap().is_some_and(|b| {
                b.finalizers().iter().any(|f| f == BINDING_FINALIZER)
                    && b.status.is_some_and(|s| !s.conditions.is_empty())
            })
        })
        .await?;
        bindings.delete(&name, &Default::default()).await.unwrap();
        step("the unused binding let go", STEP, async || {
            bindings.get_opt(&name).await.unwrap().is_none()
        })
        .await
    }
    .await;
    if result.is_err() {
        // Let the binding go, so that it does not outlive the test.
        let _ = bindings
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
        let _ = bindings.delete(&name, &Default::default()).await;
    }
    (result, op.logs())
}

#[tokio::test]
async fn the_agency_bindings_rules_are_sufficient_and_each_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = vec![None];
    cases.extend((0..agency_rules().len()).map(Some));
    let results = futures::future::join_all(cases.iter().map(|c| run_agency_case(*c, dir.path()))).await;
    let mut wrong = Vec::new();
    for (case, (result, logs)) in cases.iter().zip(results) {
        let forbidden = logs.to_lowercase().contains("forbidden");
        match (case, result) {
            (None, Ok(())) if !forbidden => {}
            (None, outcome) => wrong.push(format!(
                "with every rule: {outcome:?}, forbidden in logs: {forbidden}\n{logs}"
            )),
            (Some(i), Ok(())) => wrong.push(format!("without rule {i}: the binding's loop completed")),
            (Some(i), Err(step)) if !forbidden => wrong.push(format!(
                "without rule {i}: failed ({step}) but nothing in the logs says forbidden"
            )),
            (Some(i), Err(step)) => println!("without rule {i}: fails visibly ({step})"),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
