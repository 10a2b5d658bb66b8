//! `workspace-assist demo`: the whole lifecycle on this machine, with no cluster and no cloud
//! account. It starts the project's real control plane and the Workspace simulator, installs the
//! CRDs, runs the operator, creates two RemoteAssistances (one starts a session, one adopts the
//! session a desktop user started), cancels one with `spec.cancelled`, deletes both, runs the
//! time-boxed example (cancelled at its deadline, deleted by its TTL), prints every status
//! transition as it happens, and shuts everything down.

use anyhow::Context as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;

use super::control_plane::{ControlPlane, Harness};
use crate::controller;
use crate::resource::{Phase, RemoteAssistance};
use crate::simulator::Simulator;
use crate::workspace::Operation;

const NAMESPACE: &str = "demo";
const PROJECT: &str = "0bec5db98280d2d02fd6c00c2de791ce";
const AK: &str = "AKDEMO00000000000001";
const SK: &str = "demo-secret-key-never-printed";
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the control-plane harness is built.
    pub build_dir: PathBuf,
}

/// Runs the demo; prints as it goes.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |msg: &str| println!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());

    say("starting the control plane (kube-apiserver + etcd, built from Go modules on first use)");
    let harness = Harness::new(options.build_dir.clone());
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&harness)).await??;
    say(&format!(
        "control plane ready at {} (harness pid {})",
        cp.server, cp.pid
    ));

    let result = lifecycle(&cp, &say, started).await;

    say("stopping the control plane");
    let status = tokio::task::spawn_blocking(move || cp.stop()).await?;
    if !status.success() {
        anyhow::bail!("the control plane exited with {status}");
    }
    result?;
    say(&format!(
        "done in {:.1}s; nothing left running",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn lifecycle(cp: &ControlPlane, say: &impl Fn(&str), started: Instant) -> anyhow::Result<()> {
    let client = client_for(cp).await?;
    let sim = Simulator::start().await.context("starting the simulator")?;
    sim.add_access_key(AK, SK);
    say(&format!("Workspace simulator listening at {}", sim.endpoint()));
    sim.open_session(PROJECT, "desktop-bob");
    say("the user of desktop-bob asked for help: a session is already waiting in the cloud");
    prepare_cluster(&client, say).await?;

    let (stop_operator, stopped) = oneshot::channel::<()>();
    let config = controller::Config {
        namespace: Some(NAMESPACE.into()),
        poll_interval: Duration::from_secs(1),
        instance: "demo".into(),
        endpoints: controller::EndpointPolicy {
            extra: vec![controller::EndpointRule::parse(&sim.endpoint()).map_err(anyhow::Error::msg)?],
        },
        ..controller::Config::default()
    };
    let operator = tokio::spawn(controller::run(
        client.clone(),
        config,
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    say("operator running (watching namespace demo)");
    let (stop_watch, watch_stopped) = oneshot::channel::<()>();
    let watcher = tokio::spawn(print_transitions(client.clone(), watch_stopped, started));

    let api: Api<RemoteAssistance> = Api::namespaced(client.clone(), NAMESPACE);
    create_start_cancel_delete(&api, &sim, say).await?;

    let _ = stop_watch.send(());
    let _ = watcher.await;
    let _ = stop_operator.send(());
    operator.await??;
    say("operator stopped");
    report_cloud_calls(&sim, say)
}

/// The CRD, the namespace and the credentials Secret.
async fn prepare_cluster(client: &Client, say: &impl Fn(&str)) -> anyhow::Result<()> {
    install_crds(client).await?;
    say("CRD remoteassistances.workspace.assist.dev installed and Established");
    let namespace: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": NAMESPACE } })).expect("a namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(kube_err)?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "workspace-credentials" },
        "type": "Opaque",
        "stringData": { "accessKeyId": AK, "secretAccessKey": SK },
    }))
    .expect("a secret");
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .map_err(kube_err)?;
    say("namespace demo and Secret workspace-credentials created");
    Ok(())
}

/// What a help desk does: two RemoteAssistances (one starts a session, one adopts the one the
/// user started), one cancelled through its spec, both deleted.
async fn create_start_cancel_delete(
    api: &Api<RemoteAssistance>,
    sim: &Simulator,
    say: &impl Fn(&str),
) -> anyhow::Result<()> {
    for (name, desktop) in [("alice", "desktop-alice"), ("bob", "desktop-bob")] {
        let ra: RemoteAssistance = serde_json::from_value(json!({
            "apiVersion": "workspace.assist.dev/v1alpha1",
            "kind": "RemoteAssistance",
            "metadata": { "name": name },
            "spec": {
                "projectId": PROJECT,
                "desktopId": desktop,
                "endpoint": sim.endpoint(),
                "credentialsSecretRef": { "name": "workspace-credentials" },
            }
        }))
        .expect("a RemoteAssistance");
        api.create(&PostParams::default(), &ra).await.map_err(kube_err)?;
        say(&format!("kubectl apply: RemoteAssistance {name} for {desktop}"));
    }
    for name in ["alice", "bob"] {
        wait(api, name, "Active", |ra| {
            ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
        })
        .await?;
    }
    say(
        "both Active: alice's session was created by the operator, bob's was adopted; invitations are in Secrets alice-invitation and bob-invitation",
    );

    api.patch(
        "alice",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "cancelled": true } })),
    )
    .await
    .map_err(kube_err)?;
    say("kubectl patch: alice spec.cancelled=true");
    wait(api, "alice", "Cancelled", |ra| {
        ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Cancelled)
    })
    .await?;

    api.delete("bob", &DeleteParams::default())
        .await
        .map_err(kube_err)?;
    say("kubectl delete: bob (the finalizer holds it until the cloud confirms the cancel)");
    wait_gone(api, "bob").await?;
    api.delete("alice", &DeleteParams::default())
        .await
        .map_err(kube_err)?;
    say("kubectl delete: alice (already cancelled: no second cloud call)");
    wait_gone(api, "alice").await?;
    time_boxed(api, sim, say).await
}

/// The README's time-boxed example (deploy/examples/remoteassistance-time-boxed.yaml), pointed
/// at the simulator and with its durations shortened to seconds: cancelled at its deadline,
/// then deleted by its TTL.
async fn time_boxed(api: &Api<RemoteAssistance>, sim: &Simulator, say: &impl Fn(&str)) -> anyhow::Result<()> {
    const EXAMPLE: &str = include_str!("../../deploy/examples/remoteassistance-time-boxed.yaml");
    let mut ra: RemoteAssistance = serde_yaml::from_str(EXAMPLE).context("the time-boxed example")?;
    let name = ra.name_any();
    ra.spec.region = None;
    ra.spec.endpoint = Some(sim.endpoint());
    ra.spec.max_duration = Some("3s".into());
    ra.spec.ttl_after_finished = Some("2s".into());
    api.create(&PostParams::default(), &ra).await.map_err(kube_err)?;
    say(&format!(
        "kubectl apply: deploy/examples/remoteassistance-time-boxed.yaml as {name}, with maxDuration 3s and ttlAfterFinished 2s"
    ));
    wait(api, &name, "Cancelled at its deadline", |ra| {
        ra.status
            .as_ref()
            .is_some_and(|s| s.deadline_exceeded_at.is_some())
    })
    .await?;
    say(&format!(
        "{name}: its maximum duration passed, the operator cancelled the session (reason DeadlineExceeded)"
    ));
    wait_gone(api, &name).await?;
    say(&format!(
        "{name}: deleted by the operator 2s after it finished (ttlAfterFinished)"
    ));
    Ok(())
}

/// What the cloud saw, and that no session was left open.
fn report_cloud_calls(sim: &Simulator, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let count = |op| sim.requests().iter().filter(|r| r.operation == Some(op)).count();
    say(&format!(
        "the simulator received: {} CreateRemoteAssistance, {} ShowDesktopRemoteAssistanceInfo, {} CancelRemoteAssistance (one per session)",
        count(Operation::CreateRemoteAssistance),
        count(Operation::ShowDesktopRemoteAssistanceInfo),
        count(Operation::CancelRemoteAssistance)
    ));
    for desktop in [
        "desktop-alice",
        "desktop-bob",
        "5b1c8d2e-0f3a-4c6b-9e7d-2a4f6b8c0d1e",
    ] {
        if sim.session(PROJECT, desktop).is_some_and(|s| s.in_progress()) {
            anyhow::bail!("the session of {desktop} is still open in the cloud");
        }
    }
    Ok(())
}

/// Prints one line each time a resource's phase, readiness, cloud status or deletion changes,
/// from a watch (so every status the operator writes is seen).
async fn print_transitions(client: Client, mut stop: oneshot::Receiver<()>, started: Instant) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<RemoteAssistance> = Api::namespaced(client, NAMESPACE);
    let mut last: HashMap<String, String> = HashMap::new();
    println!(
        "{:>8}  {:<8} {:<11} {:<6} {:<18} NOTE",
        "", "RESOURCE", "PHASE", "READY", "CLOUD STATUS"
    );
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = events.next() => event,
        };
        let at = started.elapsed().as_secs_f64();
        match event {
            Some(Ok(watcher::Event::Apply(ra) | watcher::Event::InitApply(ra))) => {
                let name = ra.name_any();
                let line = describe(&ra);
                if last.get(&name) != Some(&line) {
                    println!("[{at:>5.1}s] {line}");
                    last.insert(name, line);
                }
            }
            Some(Ok(watcher::Event::Delete(ra))) => {
                println!("[{at:>5.1}s] {:<8} (gone)", ra.name_any());
                last.remove(&ra.name_any());
            }
            Some(_) => {}
            None => break,
        }
    }
}

/// One row of the transitions table.
fn describe(ra: &RemoteAssistance) -> String {
    let status = ra.status.clone().unwrap_or_default();
    let phase = status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "-".into());
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map_or("-".to_string(), |c| c.status.clone());
    let cloud = status
        .assistance
        .as_ref()
        .and_then(|a| a.status.clone())
        .unwrap_or_else(|| "-".into());
    let mut note = Vec::new();
    if ra.finalizers().iter().any(|f| f == crate::resource::FINALIZER) {
        note.push("finalizer held".to_string());
    }
    if ra.metadata.deletion_timestamp.is_some() {
        note.push("deleting".into());
    }
    if status.cancel_attempts > 0 {
        note.push(format!("cancel calls: {}", status.cancel_attempts));
    }
    if let Some(e) = &status.last_error {
        note.push(format!(
            "last error: {}",
            e.error_code.clone().unwrap_or_default()
        ));
    }
    format!(
        "{:<8} {:<11} {:<6} {:<18} {}",
        ra.name_any(),
        phase,
        ready,
        cloud,
        note.join(", ")
    )
}

async fn wait(
    api: &Api<RemoteAssistance>,
    name: &str,
    what: &str,
    check: impl Fn(&RemoteAssistance) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if api
            .get_opt(name)
            .await
            .map_err(kube_err)?
            .as_ref()
            .is_some_and(&check)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{name} did not become {what} within {STEP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_gone(api: &Api<RemoteAssistance>, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while api.get_opt(name).await.map_err(kube_err)?.is_some() {
        if Instant::now() > deadline {
            anyhow::bail!("{name} was not gone within {STEP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// An admin client of a control plane.
pub async fn client_for(cp: &ControlPlane) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).context("reading the kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")?;
    Client::try_from(config).map_err(kube_err)
}

/// Server-side applies the project's CRDs and waits until each is Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in [crate::resource::crd(), crate::agency_binding::crd()] {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("workspace-assist").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(kube_err)?;
        wait_established(client, &name).await?;
    }
    Ok(())
}

/// Waits until the apiserver reports CRD `name` Established.
pub async fn wait_established(client: &Client, name: &str) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let current = api.get(name).await.map_err(kube_err)?;
        let established = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("CRD {name} was not Established within {STEP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kube_err(e: kube::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("Kubernetes API")
}
