//! Runs the operator against the real control plane and the project's Workspace simulator, and
//! gives tests small helpers to create resources and wait for what the operator does.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;
use workspace_assist::controller::{self, BackoffPolicy};
use workspace_assist::resource::RemoteAssistance;
use workspace_assist::simulator::Simulator;
use workspace_assist::workspace::Operation;

/// The operations, as the simulator's request log names them.
pub const CANCEL: Operation = Operation::CancelRemoteAssistance;
/// See [`CANCEL`].
pub const CREATE: Operation = Operation::CreateRemoteAssistance;
/// See [`CANCEL`].
pub const SHOW: Operation = Operation::ShowDesktopRemoteAssistanceInfo;

/// The resource's status.phase.
pub fn phase(ra: &RemoteAssistance) -> Option<workspace_assist::resource::Phase> {
    ra.status.as_ref().and_then(|s| s.phase)
}

/// Project ID used by the tests.
pub const PROJECT: &str = "0bec5db98280d2d02fd6c00c2de791ce";
/// Access key the simulator accepts.
pub const AK: &str = "AKTESTEXAMPLE0000001";
/// Its secret key.
pub const SK: &str = "sk-test-Zq8uVx2Lr9Wm4Tn6Yp1Ks3Hd5Jf7Gb0c";
/// Name of the credentials Secret created in each test namespace.
pub const SECRET: &str = "cloud-credentials";

/// One test's world: a namespace, the simulator, and (once started) the operator.
pub struct World {
    /// Admin client.
    pub client: Client,
    /// The test's namespace.
    pub namespace: String,
    /// The simulator.
    pub sim: Simulator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), controller::StartError>>>,
}

impl World {
    /// A namespace with the CRDs installed, a simulator that knows AK/SK, and the credentials
    /// Secret.
    pub async fn new(prefix: &str) -> World {
        World::on(super::admin_client().await, prefix).await
    }

    /// The same, on the control plane of `client`.
    pub async fn on(client: Client, prefix: &str) -> World {
        super::install_project_crds(&client).await;
        let namespace = super::fresh_namespace(&client, prefix).await;
        let sim = Simulator::start().await.expect("starting the simulator");
        sim.add_access_key(AK, SK);
        let world = World {
            client,
            namespace,
            sim,
            stop: None,
            task: None,
        };
        world
            .put_secret(SECRET, &[("accessKeyId", AK), ("secretAccessKey", SK)])
            .await;
        world
    }

    /// Test-friendly controller settings: this namespace only, quick backoff.
    pub fn config(&self) -> controller::Config {
        controller::Config {
            namespace: Some(self.namespace.clone()),
            poll_interval: Duration::from_millis(500),
            backoff: BackoffPolicy {
                base: Duration::from_millis(200),
                max: Duration::from_secs(5),
                needs_human_recheck: Duration::from_secs(600),
            },
            endpoints: controller::EndpointPolicy {
                extra: vec![self.allowed_endpoint()],
            },
            ..controller::Config::default()
        }
    }

    /// The simulator's endpoint as an allowed-endpoint rule (the operator sends credentials only
    /// to endpoints it allows).
    pub fn allowed_endpoint(&self) -> controller::EndpointRule {
        controller::EndpointRule::parse(&self.sim.endpoint())
            .expect("the simulator's endpoint is a valid rule")
    }

    /// Starts the operator in this process.
    pub fn start_operator(&mut self, config: controller::Config) {
        self.start_operator_with(config, Default::default());
    }

    /// Starts the operator in this process, reporting to `telemetry` (its metrics and health).
    pub fn start_operator_with(&mut self, config: controller::Config, telemetry: controller::Telemetry) {
        let (tx, rx) = oneshot::channel();
        let client = self.client.clone();
        self.task = Some(tokio::spawn(controller::run(
            client,
            config,
            telemetry,
            async move {
                let _ = rx.await;
            },
        )));
        self.stop = Some(tx);
    }

    /// Stops the operator and waits for it to finish in-flight work.
    pub async fn stop_operator(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the operator stops within 30s")
                .expect("the operator task did not panic")
                .expect("the operator ran without error");
        }
    }

    /// The RemoteAssistance API of the test namespace.
    pub fn api(&self) -> Api<RemoteAssistance> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates the credentials Secret the simulator accepts in another namespace.
    pub async fn put_secret_in(&self, namespace: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": SECRET, "namespace": namespace },
            "type": "Opaque",
            "stringData": { "accessKeyId": AK, "secretAccessKey": SK },
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &secret)
            .await
            .expect("creating the Secret");
    }

    /// Creates or replaces an Opaque Secret with string data.
    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let string_data: serde_json::Map<String, serde_json::Value> =
            data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name, "namespace": self.namespace },
            "type": "Opaque",
            "stringData": string_data,
        }))
        .unwrap();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        if api.get_opt(name).await.unwrap().is_some() {
            api.replace(name, &PostParams::default(), &secret)
                .await
                .expect("replacing the Secret");
        } else {
            api.create(&PostParams::default(), &secret)
                .await
                .expect("creating the Secret");
        }
    }

    /// The manifest of a RemoteAssistance for `desktop` that points at the simulator.
    pub fn manifest(&self, name: &str, desktop: &str) -> serde_json::Value {
        json!({
            "apiVersion": "workspace.assist.dev/v1alpha1",
            "kind": "RemoteAssistance",
            "metadata": { "name": name, "namespace": self.namespace },
            "spec": {
                "projectId": PROJECT,
                "desktopId": desktop,
                "endpoint": self.sim.endpoint(),
                "credentialsSecretRef": { "name": SECRET },
            }
        })
    }

    /// Creates a RemoteAssistance from a manifest.
    pub async fn create(&self, manifest: serde_json::Value) -> RemoteAssistance {
        let ra: RemoteAssistance = serde_json::from_value(manifest).expect("a RemoteAssistance manifest");
        self.api()
            .create(&PostParams::default(), &ra)
            .await
            .expect("creating the RemoteAssistance")
    }

    /// Merge-patches a RemoteAssistance's metadata.annotations (a null value removes one).
    pub async fn annotate(&self, name: &str, annotations: serde_json::Value) {
        self.api()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": annotations } })),
            )
            .await
            .expect("annotating the RemoteAssistance");
    }

    /// Creates the ServiceAccount `name` in the test namespace.
    pub async fn create_service_account(&self, name: &str) {
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let sa = serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
        api.create(&PostParams::default(), &sa)
            .await
            .expect("creating the ServiceAccount");
    }

    /// A real token of the test namespace's ServiceAccount `sa` for `audience` (an hour), from
    /// the TokenRequest API, as the kubelet gets one for a projected volume.
    pub async fn request_token(&self, sa: &str, audience: &str) -> String {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_string()]),
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            }),
            ..TokenRequest::default()
        };
        let answer = api
            .create_token_request(sa, &PostParams::default(), &request)
            .await
            .expect("TokenRequest");
        answer.status.and_then(|s| s.token).expect("a token")
    }

    /// Merge-patches the annotations of the test namespace.
    pub async fn annotate_namespace(&self, annotations: serde_json::Value) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        api.patch(
            &self.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": annotations } })),
        )
        .await
        .expect("annotating the namespace");
    }

    /// Reads a Secret of the test namespace.
    pub async fn secret(&self, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .expect("reading a Secret")
    }

    /// Merge-patches a RemoteAssistance's spec.
    pub async fn patch_spec(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<RemoteAssistance, kube::Error> {
        self.api()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
    }

    /// Requests deletion.
    pub async fn delete(&self, name: &str) {
        self.api()
            .delete(name, &DeleteParams::default())
            .await
            .expect("deleting the RemoteAssistance");
    }

    /// Polls until `check` holds for the object, or panics after `timeout` with the last state.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&RemoteAssistance) -> bool,
    ) -> RemoteAssistance {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = self
                .api()
                .get_opt(name)
                .await
                .expect("reading the RemoteAssistance");
            if let Some(ra) = &current
                && check(ra)
            {
                return ra.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{name}: not {what} within {timeout:?}; last state: {}",
                    serde_json::to_string_pretty(&current).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls until the object is gone.
    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = self
                .api()
                .get_opt(name)
                .await
                .expect("reading the RemoteAssistance");
            let Some(ra) = current else { return };
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{name}: still present after {timeout:?}: {}",
                    serde_json::to_string_pretty(&ra).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The status of condition `type_` ("True", "False"), if present.
pub fn condition(ra: &RemoteAssistance, type_: &str) -> Option<String> {
    ra.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// The reason of condition `type_`, if present.
pub fn condition_reason(ra: &RemoteAssistance, type_: &str) -> Option<String> {
    ra.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone())
}

/// Whether the operator's finalizer is on the object.
pub fn has_finalizer(ra: &RemoteAssistance) -> bool {
    ra.finalizers()
        .iter()
        .any(|f| f == workspace_assist::resource::FINALIZER)
}

/// Waits until `f` returns true, polling, or panics with `what`.
pub async fn eventually<F: Future<Output = bool>>(timeout: Duration, what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not {what} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The busiest second of any one desktop: the calls it received within one second of one of
/// them, the most there are. Printed when a bound on it fails, so the failure says which calls.
pub struct BusiestSecond {
    /// The desktop.
    pub desktop_id: String,
    /// Its calls in that second: offset from the first, operation, status (0: dropped), faulted.
    pub calls: Vec<(
        Duration,
        Option<workspace_assist::workspace::Operation>,
        u16,
        bool,
    )>,
}

impl BusiestSecond {
    /// How many calls.
    pub fn count(&self) -> usize {
        self.calls.len()
    }
}

impl std::fmt::Display for BusiestSecond {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls to {} within one second:",
            self.calls.len(),
            self.desktop_id
        )?;
        for (offset, operation, status, faulted) in &self.calls {
            let fault = if *faulted { " (injected fault)" } else { "" };
            write!(
                f,
                "\n  +{:>4} ms {operation:?} -> {status}{fault}",
                offset.as_millis()
            )?;
        }
        Ok(())
    }
}

/// The recorded calls grouped by desktop, each group in arrival order.
fn calls_by_desktop(
    requests: &[workspace_assist::simulator::RecordedRequest],
) -> std::collections::HashMap<&str, Vec<&workspace_assist::simulator::RecordedRequest>> {
    let mut by_desktop: std::collections::HashMap<&str, Vec<&workspace_assist::simulator::RecordedRequest>> =
        std::collections::HashMap::new();
    for r in requests {
        by_desktop.entry(r.desktop_id.as_str()).or_default().push(r);
    }
    for calls in by_desktop.values_mut() {
        calls.sort_by_key(|r| r.at);
    }
    by_desktop
}

/// The busiest second of any one desktop (see [`BusiestSecond`]).
pub fn busiest_second_per_desktop(
    requests: &[workspace_assist::simulator::RecordedRequest],
) -> BusiestSecond {
    let by_desktop = calls_by_desktop(requests);
    let mut busiest = BusiestSecond {
        desktop_id: String::new(),
        calls: vec![],
    };
    for (desktop, calls) in by_desktop {
        for first in &calls {
            let within: Vec<_> = calls
                .iter()
                .filter(|r| r.at >= first.at && r.at < first.at + Duration::from_secs(1))
                .collect();
            if within.len() > busiest.calls.len() {
                busiest = BusiestSecond {
                    desktop_id: desktop.to_string(),
                    calls: within
                        .iter()
                        .map(|r| (r.at - first.at, r.operation, r.status, r.faulted))
                        .collect(),
                };
            }
        }
    }
    busiest
}

/// The soonest any desktop was called again after an injected fault: the gap, the desktop, and
/// the faulted call's operation and status. The Show that may follow a refused Create at once
/// (a faulted Create answered 200 or a 4xx other than 429, looking for a session started
/// meanwhile) belongs to the same attempt and is not counted as a retry.
pub fn quickest_retry_after_fault(
    requests: &[workspace_assist::simulator::RecordedRequest],
) -> Option<(
    Duration,
    String,
    Option<workspace_assist::workspace::Operation>,
    u16,
)> {
    use workspace_assist::workspace::Operation;
    let by_desktop = calls_by_desktop(requests);
    let mut quickest: Option<(Duration, String, Option<Operation>, u16)> = None;
    for (desktop, calls) in by_desktop {
        for pair in calls.windows(2) {
            let (fault, next) = (pair[0], pair[1]);
            let refused_create = fault.operation == Some(Operation::CreateRemoteAssistance)
                && (fault.status == 200 || ((400..500).contains(&fault.status) && fault.status != 429));
            if !fault.faulted
                || (refused_create && next.operation == Some(Operation::ShowDesktopRemoteAssistanceInfo))
            {
                continue;
            }
            let gap = next.at - fault.at;
            if quickest.as_ref().is_none_or(|q| gap < q.0) {
                quickest = Some((gap, desktop.to_string(), fault.operation, fault.status));
            }
        }
    }
    quickest
}

/// How many attempts of one run of failures can start within `window` when every retry comes
/// as early as `policy` allows (the shortest jitter; a failure that needs a person is rechecked
/// after `needs_human_recheck` if that is sooner).
pub fn attempts_within(policy: &BackoffPolicy, window: Duration) -> usize {
    let mut attempts = 1;
    let mut elapsed = Duration::ZERO;
    for failures in 1..=64 {
        elapsed += policy.retry_delay(failures, 0.0).min(policy.needs_human_recheck);
        if elapsed >= window {
            break;
        }
        attempts += 1;
    }
    attempts
}

/// Every kind of cloud failure the tests inject at random: server errors, an HTML page,
/// throttling, a slow answer, a dropped connection, a reply lost after the cloud did the work,
/// truncated JSON, an empty and a huge body, an error delivered with HTTP 200, a proxy's 404.
pub fn assorted_cloud_faults() -> Vec<workspace_assist::simulator::Fault> {
    use workspace_assist::simulator::Fault;
    let raw = |status: u16, body: &[u8]| Fault::Raw {
        status,
        content_type: "application/json".into(),
        body: body.to_vec(),
        headers: vec![],
    };
    vec![
        Fault::error(500, "WKS.00000001", "internal error"),
        Fault::html(502),
        Fault::error(503, "APIGW.0503", "service unavailable"),
        Fault::error(429, "APIGW.0308", "throttled"),
        Fault::Delay(Duration::from_millis(1500)),
        Fault::Drop,
        Fault::DropAfterApplying,
        Fault::error(200, "WKS.00010306", "an error delivered with HTTP 200"),
        Fault::foreign_json_404(),
        raw(200, b"{\"share_space_id\": \"trunc"),
        raw(200, b""),
        raw(200, &vec![b'x'; 2 << 20]),
    ]
}

impl World {
    /// The Events about resource `name`.
    pub async fn events_about(&self, name: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let all = events.list(&Default::default()).await.unwrap().items;
        all.into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    /// Notes of the Events about resource `name`.
    pub async fn event_notes(&self, name: &str) -> Vec<String> {
        self.events_about(name)
            .await
            .into_iter()
            .filter_map(|e| e.note)
            .collect()
    }

    /// Reasons of the Events about resource `name` (of the given type, or any).
    pub async fn event_reasons(&self, name: &str, type_: Option<&str>) -> Vec<String> {
        let about = self.events_about(name).await;
        about
            .into_iter()
            .filter(|e| type_.is_none() || e.type_.as_deref() == type_)
            .filter_map(|e| e.reason)
            .collect()
    }
}
