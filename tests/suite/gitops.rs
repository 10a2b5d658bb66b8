//! GitOps tools read the resource right: the real kstatus library (sigs.k8s.io/cli-utils, as
//! Flux uses it) and Argo CD's Lua health check (run with gopher-lua, as Argo CD runs it) on
//! status objects the operator produced on the real control plane.

use crate::support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::operator::phase;
use support::operator::{PROJECT, World, condition};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::simulator::{Fault, FaultRule};
use workspace_assist::workspace::Operation;

const T: Duration = Duration::from_secs(20);

/// Runs a Go tool of the harness module with `objects` as a JSON array on stdin; returns
/// name → (status, message).
fn evaluate(
    tool: &str,
    args: &[&str],
    objects: &[RemoteAssistance],
) -> std::collections::HashMap<String, (String, String)> {
    let mut child = Command::new(support::control_plane::go_tool(tool))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(objects).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .into_iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                (
                    r["status"].as_str().unwrap().to_string(),
                    r["message"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// Real status objects in each situation a GitOps tool must tell apart.
async fn produce_objects() -> Vec<RemoteAssistance> {
    let mut w = World::new("gitops").await;
    w.sim.open_session(PROJECT, "active");
    w.sim.open_session(PROJECT, "cancelled");
    w.sim.open_session(PROJECT, "paused");
    w.sim.open_session(PROJECT, "forbidden");
    w.sim.inject(FaultRule::new(
        "forbidden",
        Operation::CancelRemoteAssistance,
        vec![Fault::error(
            403,
            "WKS.00010003",
            "The user does not have the permission.",
        )],
    ));
    w.start_operator(w.config());
    for name in ["active", "cancelled", "paused", "forbidden", "waiting"] {
        let mut m = w.manifest(name, name);
        if name == "waiting" {
            m["spec"]["initiate"] = json!(false);
        }
        w.create(m).await;
    }
    let mut objects = Vec::new();
    objects.push(
        w.wait_for("active", T, "Active", |ra| phase(ra) == Some(Phase::Active))
            .await,
    );
    objects.push(
        w.wait_for("waiting", T, "Pending", |ra| phase(ra) == Some(Phase::Pending))
            .await,
    );
    w.wait_for("paused", T, "Active", |ra| phase(ra) == Some(Phase::Active))
        .await;
    w.annotate("paused", json!({ "workspace.assist.dev/paused": "true" }))
        .await;
    objects.push(
        w.wait_for("paused", T, "paused", |ra| {
            support::operator::condition_reason(ra, "Synced").as_deref() == Some("Paused")
        })
        .await,
    );
    w.patch_spec("cancelled", json!({ "cancelled": true }))
        .await
        .unwrap();
    objects.push(
        w.wait_for("cancelled", T, "Cancelled", |ra| {
            phase(ra) == Some(Phase::Cancelled)
        })
        .await,
    );
    w.patch_spec("forbidden", json!({ "cancelled": true }))
        .await
        .unwrap();
    objects.push(
        w.wait_for("forbidden", T, "Stalled", |ra| {
            condition(ra, "Stalled").as_deref() == Some("True")
        })
        .await,
    );

    // A spec change the operator has not observed yet.
    w.stop_operator().await;
    let mut unobserved = w
        .patch_spec("active", json!({ "maxDuration": "8h" }))
        .await
        .unwrap();
    assert_ne!(
        unobserved.metadata.generation,
        unobserved.status.as_ref().unwrap().observed_generation
    );
    unobserved.metadata.name = Some("unobserved".into());
    objects.push(unobserved);
    // A resource the operator has not reconciled at all (as a GitOps tool sees it right after
    // applying it): the CRD's default status.observedGeneration 0 keeps it in progress.
    w.create(w.manifest("fresh", "fresh")).await;
    let fresh = w.api().get("fresh").await.unwrap();
    assert_eq!(
        fresh.status.as_ref().and_then(|s| s.observed_generation),
        Some(0),
        "the API server defaults it"
    );
    objects.push(fresh);
    objects
}

#[tokio::test]
async fn kstatus_and_argocd_read_the_operator_status() {
    let objects = produce_objects().await;
    let kstatus = evaluate("kstatus", &[], &objects);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/health.lua");
    let argocd = evaluate("luahealth", &[script.to_str().unwrap()], &objects);
    let expected = [
        ("active", "Current", "Healthy"),
        ("waiting", "InProgress", "Progressing"),
        ("paused", "Current", "Suspended"),
        ("cancelled", "Current", "Healthy"),
        ("forbidden", "Failed", "Degraded"),
        ("unobserved", "InProgress", "Progressing"),
        ("fresh", "InProgress", "Progressing"),
    ];
    for (name, want_kstatus, want_argocd) in expected {
        assert_eq!(
            kstatus[name].0, want_kstatus,
            "kstatus of {name}: {:?}",
            kstatus[name]
        );
        assert_eq!(
            argocd[name].0, want_argocd,
            "Argo CD health of {name}: {:?}",
            argocd[name]
        );
    }
    assert!(
        argocd["forbidden"].1.contains("WKS.00010003"),
        "Degraded says why: {:?}",
        argocd["forbidden"]
    );
}

#[test]
fn the_argocd_configmap_embeds_the_health_script() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(root.join("deploy/argocd/health.lua")).unwrap();
    let cm: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("deploy/argocd/argocd-cm-patch.yaml")).unwrap(),
    )
    .unwrap();
    let embedded = cm["data"]["resource.customizations.health.workspace.assist.dev_RemoteAssistance"]
        .as_str()
        .unwrap();
    assert_eq!(
        embedded, script,
        "deploy/argocd/argocd-cm-patch.yaml must embed deploy/argocd/health.lua as it is"
    );
}

/// Argo CD's verdicts through the cycle a sync with prune drives: applied (not reconciled yet),
/// synced, pruned while its cancel is refused (held by the finalizer), and gone once the cancel
/// is confirmed.
#[tokio::test]
async fn argocd_verdicts_through_an_add_and_prune_cycle() {
    let mut w = World::new("argocd-cycle").await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/health.lua");
    let verdict = |ra: &RemoteAssistance| {
        let mut ra = ra.clone();
        ra.metadata.name = Some("ticket".into());
        evaluate("luahealth", &[script.to_str().unwrap()], &[ra])["ticket"].clone()
    };
    // Applied by the sync before the operator saw it.
    w.create(w.manifest("ticket", "ticket")).await;
    let applied = w.api().get("ticket").await.unwrap();
    assert_eq!(verdict(&applied).0, "Progressing", "{:?}", verdict(&applied));
    w.start_operator(w.config());
    let active = w
        .wait_for("ticket", T, "Active", |ra| phase(ra) == Some(Phase::Active))
        .await;
    assert_eq!(verdict(&active).0, "Healthy");
    // Pruned: the cancel is refused, so the finalizer holds it, and Argo CD sees why.
    w.sim.inject(FaultRule::new(
        "ticket",
        Operation::CancelRemoteAssistance,
        vec![Fault::error(
            403,
            "WKS.00010003",
            "The user does not have the permission.",
        )],
    ));
    w.delete("ticket").await;
    let held = w
        .wait_for("ticket", T, "Stalled while deleting", |ra| {
            condition(ra, "Stalled").as_deref() == Some("True")
        })
        .await;
    assert!(held.metadata.deletion_timestamp.is_some());
    let (health, message) = verdict(&held);
    assert_eq!(health, "Degraded", "{message}");
    assert!(message.contains("WKS.00010003"), "{message}");
    // A person fixes the permission and asks again: the cancel is confirmed and it goes.
    w.annotate("ticket", json!({ "workspace.assist.dev/retry": "1" }))
        .await;
    w.wait_gone("ticket", T).await;
    assert_eq!(w.sim.count(Operation::CancelRemoteAssistance, "ticket"), 2);
    w.stop_operator().await;
}
