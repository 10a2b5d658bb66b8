//! Pacing per credential on the real control plane and the simulator: many resources that share
//! one wrong key make one failed call per lock window (the gateway locks a key after 5), a wrong
//! IAM password is tried once, not once per resource, and only a change of the Secret's data
//! (not of its metadata) re-drives them.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::operator::{AK, SECRET, SK, World, condition_reason};
use workspace_assist::resource::{Phase, RemoteAssistance};

const T: Duration = Duration::from_secs(60);

fn stalled_unauthenticated(ra: &RemoteAssistance) -> bool {
    condition_reason(ra, "Stalled").as_deref() == Some("Unauthenticated")
}

fn active(ra: &RemoteAssistance) -> bool {
    ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
}

#[tokio::test]
async fn many_resources_on_one_wrong_key_make_one_failed_call() {
    let mut w = World::new("pacing").await;
    w.put_secret(
        SECRET,
        &[("accessKeyId", AK), ("secretAccessKey", "a-wrong-secret-key")],
    )
    .await;
    let mut config = w.config();
    config.unauthenticated_pause = Duration::from_secs(600);
    let telemetry = workspace_assist::controller::Telemetry::default();
    w.start_operator_with(config, telemetry.clone());
    // Reconciles by result, from the operator's own metrics.
    let reconciles = |result: &str| -> u64 {
        let prefix = format!("workspace_assist_reconciles_total{{result=\"{result}\"");
        telemetry
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let names: Vec<String> = (0..30).map(|i| format!("bad-key-{i}")).collect();
    for n in &names {
        w.create(w.manifest(n, n)).await;
    }
    for n in &names {
        w.wait_for(n, T, "Stalled Unauthenticated", stalled_unauthenticated)
            .await;
    }
    let refused = || w.sim.requests().iter().filter(|r| r.status == 401).count();
    assert_eq!(refused(), 1, "one probe for the key, every other call withheld");

    // A metadata-only change of the Secret (a label, like the operator's own pin) re-drives
    // nothing: its data is the same.
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.namespace);
    let (attempts, held) = (reconciles("error"), reconciles("backoff"));
    secrets
        .patch(
            SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "touched": "yes" } } })),
        )
        .await
        .unwrap();
    // The operator saw the change (each user of the Secret is looked at, and held back) and
    // attempted nothing.
    support::operator::eventually(T, "every user of the Secret looked at", || async {
        reconciles("backoff") >= held + names.len() as u64
    })
    .await;
    assert_eq!(
        reconciles("error"),
        attempts,
        "a metadata-only change re-drove an attempt"
    );
    // A retry asked for on one resource shows the operator is awake; it is withheld too.
    w.annotate(&names[0], json!({ "workspace.assist.dev/retry": "1" }))
        .await;
    w.wait_for(&names[0], T, "withheld again", |ra| {
        ra.status
            .as_ref()
            .and_then(|s| s.last_error.as_ref())
            .is_some_and(|e| e.error_message.as_deref().is_some_and(|m| m.contains("not sent")))
    })
    .await;
    assert_eq!(
        refused(),
        1,
        "no call after a metadata change or a retry within the lock window"
    );

    // The right key: every resource goes on at once.
    w.put_secret(SECRET, &[("accessKeyId", AK), ("secretAccessKey", SK)])
        .await;
    for n in &names {
        w.wait_for(n, T, "Active", active).await;
    }
    assert_eq!(refused(), 1, "still one failed call in all");
    w.stop_operator().await;
}

#[tokio::test]
async fn a_wrong_password_is_tried_once_for_all_resources() {
    let mut w = World::new("pacing").await;
    w.sim.add_iam_user("acme", "helpdesk", "the-right-password");
    w.put_secret(
        "iam-login",
        &[
            ("username", "helpdesk"),
            ("password", "a-wrong-password"),
            ("domainName", "acme"),
            ("iamEndpoint", &w.sim.endpoint()),
        ],
    )
    .await;
    let mut config = w.config();
    config.unauthenticated_pause = Duration::from_secs(600);
    w.start_operator(config);
    let names: Vec<String> = (0..10).map(|i| format!("pw-{i}")).collect();
    for n in &names {
        let mut m = w.manifest(n, n);
        m["spec"]["credentialsSecretRef"]["name"] = json!("iam-login");
        w.create(m).await;
    }
    for n in &names {
        w.wait_for(n, T, "Stalled Unauthenticated", stalled_unauthenticated)
            .await;
    }
    assert_eq!(
        w.sim.token_refusals(),
        1,
        "one login with the wrong password, not one per resource"
    );
    assert!(w.sim.requests().is_empty(), "no Workspace call without a token");

    w.put_secret(
        "iam-login",
        &[
            ("username", "helpdesk"),
            ("password", "the-right-password"),
            ("domainName", "acme"),
            ("iamEndpoint", &w.sim.endpoint()),
        ],
    )
    .await;
    for n in &names {
        w.wait_for(n, T, "Active", active).await;
    }
    assert_eq!(
        w.sim.tokens_issued(),
        1,
        "one login for all of them (single-flight)"
    );
    assert_eq!(w.sim.token_refusals(), 1);
    w.stop_operator().await;
}

/// A deletion the cloud refuses to confirm waits for a person (the slow recheck, 10 minutes
/// here); the person choosing Orphan with the annotation re-drives it at once.
#[tokio::test]
async fn choosing_orphan_by_annotation_releases_a_refused_deletion_at_once() {
    use workspace_assist::simulator::{Fault, FaultRule};
    use workspace_assist::workspace::Operation;
    let mut w = World::new("pacing-orphan").await;
    w.start_operator(w.config());
    w.create(w.manifest("refused", "refused")).await;
    w.wait_for("refused", T, "Active", active).await;
    w.sim.inject(FaultRule::new(
        "refused",
        Operation::CancelRemoteAssistance,
        vec![Fault::error(403, "WKS.00010003", "The user does not have the permission."); 10],
    ));
    w.delete("refused").await;
    w.wait_for("refused", T, "Stalled while deleting", |ra| {
        ra.metadata.deletion_timestamp.is_some() && condition_reason(ra, "Stalled").is_some()
    })
    .await;
    w.annotate(
        "refused",
        json!({ "workspace.assist.dev/deletion-policy": "Orphan" }),
    )
    .await;
    w.wait_gone("refused", T).await;
    assert_eq!(
        w.sim.count(Operation::CancelRemoteAssistance, "refused"),
        1,
        "no further cancel: Orphan leaves the session alone"
    );
    w.stop_operator().await;
}
