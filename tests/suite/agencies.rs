//! Many Huawei Cloud accounts from one operator, on the real control plane: AgencyBindings
//! (cluster-scoped) select namespaces; the operator's own identity (CCE pod identity, with a
//! real ServiceAccount token reviewed by the API server) assumes each binding's agency at the
//! simulator's IAM, and the temporary credentials reach only the delegating account's projects.

use crate::support;

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::operator::{World, condition_reason, eventually, has_finalizer, phase};
use workspace_assist::agency_binding::{AgencyBinding, BINDING_FINALIZER, session_user_name};
use workspace_assist::controller::{Config, Telemetry};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::workspace::{AmbientSource, Operation};

const T: Duration = Duration::from_secs(60);
const AUDIENCE: &str = "pod-identity.workspace.sim";
/// The operator's own account, and the two accounts it serves.
const OPERATOR_DOMAIN: &str = "d-operator";
const DOMAIN_A: &str = "d-alpha";
const DOMAIN_B: &str = "d-beta";
const PROJECT_A: &str = "p-alpha-0001";
const PROJECT_B: &str = "p-beta-0001";
const AGENCY: &str = "workspace-assist";

/// One test: the simulator's accounts and agencies, two namespaces, a binding for each, and the
/// operator with pod identity as its own identity.
struct Agencies {
    w: World,
    second: String,
    binding_a: String,
    binding_b: String,
    _token_dir: tempfile::TempDir,
}

impl Agencies {
    async fn new(prefix: &str) -> Agencies {
        let w = World::new(prefix).await;
        let second = support::fresh_namespace(&w.client, prefix).await;
        w.sim.add_account(OPERATOR_DOMAIN, "operator", &[]);
        w.sim.add_account(DOMAIN_A, "alpha", &[PROJECT_A]);
        w.sim.add_account(DOMAIN_B, "beta", &[PROJECT_B]);
        w.sim.add_agency(DOMAIN_A, AGENCY, OPERATOR_DOMAIN);
        w.sim.add_agency(DOMAIN_B, AGENCY, OPERATOR_DOMAIN);
        w.sim.ambient_account(OPERATOR_DOMAIN);
        // The operator's identity: a ServiceAccount bound to the operator's account.
        w.create_service_account("operator").await;
        let token = w.request_token("operator", AUDIENCE).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), token).unwrap();
        w.sim.trust_kubernetes(w.client.clone());
        w.sim
            .enable_pod_identity(AUDIENCE, &[&format!("{}/operator", w.namespace)]);
        let binding_a = format!("{}-a", w.namespace);
        let binding_b = format!("{}-b", w.namespace);
        let test = Agencies {
            second,
            binding_a,
            binding_b,
            _token_dir: dir,
            w,
        };
        test.put_binding(&test.binding_a, json!({"domainId": DOMAIN_A}), &test.w.namespace)
            .await;
        test.put_binding(&test.binding_b, json!({"domainName": "beta"}), &test.second)
            .await;
        test
    }

    fn bindings(&self) -> Api<AgencyBinding> {
        Api::all(self.w.client.clone())
    }

    /// Creates (or updates) a binding of the agency in the account `account` for `namespace`.
    async fn put_binding(&self, name: &str, account: serde_json::Value, namespace: &str) {
        let mut spec = json!({
            "agencyName": AGENCY,
            "durationSeconds": 900,
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } },
        });
        spec.as_object_mut()
            .unwrap()
            .extend(account.as_object().unwrap().clone());
        let binding = json!({
            "apiVersion": "workspace.assist.dev/v1alpha1", "kind": "AgencyBinding",
            "metadata": { "name": name, "labels": { "agency-test": self.w.namespace } },
            "spec": spec,
        });
        self.bindings()
            .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&binding))
            .await
            .expect("applying the AgencyBinding");
    }

    fn config(&self) -> Config {
        let mut config = self.w.config();
        config.namespace = None;
        config.label_selector = Some(format!("agency-test={}", self.w.namespace));
        config.agency_bindings = true;
        config.agency_binding_selector = Some(format!("agency-test={}", self.w.namespace));
        config.iam_endpoint = Some(self.w.sim.endpoint().parse().unwrap());
        config.ambient = Some(AmbientSource::PodIdentity {
            uri: self.w.sim.pod_identity_uri().parse().unwrap(),
            token_file: self._token_dir.path().join("token"),
        });
        config
    }

    fn api(&self, namespace: &str) -> Api<RemoteAssistance> {
        Api::namespaced(self.w.client.clone(), namespace)
    }

    /// A RemoteAssistance without a credentials Secret, for `project`.
    async fn create(&self, namespace: &str, name: &str, project: &str, extra: serde_json::Value) {
        let mut spec = json!({ "projectId": project, "desktopId": name, "endpoint": self.w.sim.endpoint() });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let ra: RemoteAssistance = serde_json::from_value(json!({
            "apiVersion": "workspace.assist.dev/v1alpha1", "kind": "RemoteAssistance",
            "metadata": { "name": name, "labels": { "agency-test": self.w.namespace } },
            "spec": spec,
        }))
        .unwrap();
        self.api(namespace)
            .create(&PostParams::default(), &ra)
            .await
            .expect("creating the RemoteAssistance");
    }

    async fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        check: impl Fn(&RemoteAssistance) -> bool,
    ) -> RemoteAssistance {
        let api = self.api(namespace);
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let current = api.get_opt(name).await.unwrap();
            if let Some(ra) = &current
                && check(ra)
            {
                return ra.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: not {what}; last: {}",
                serde_json::to_string_pretty(&current).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn delete_and_wait_gone(&self, namespace: &str, name: &str) {
        let api = self.api(namespace);
        api.delete(name, &DeleteParams::default()).await.unwrap();
        eventually(T, &format!("{name} gone"), || async {
            api.get_opt(name).await.unwrap().is_none()
        })
        .await;
    }

    /// Deletes a resource that could never call the cloud: it cannot prove there is nothing to
    /// cancel, so its finalizer stays (a person sees it) until a person chooses Orphan.
    async fn delete_unprovable_and_orphan(&self, namespace: &str, name: &str) {
        let api = self.api(namespace);
        api.delete(name, &DeleteParams::default()).await.unwrap();
        let held = api.get(name).await.unwrap();
        assert!(
            has_finalizer(&held),
            "{name}: held while nothing proves it is over"
        );
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
        )
        .await
        .unwrap();
        eventually(T, &format!("{name} gone"), || async {
            api.get_opt(name).await.unwrap().is_none()
        })
        .await;
    }

    /// The requests the simulator answered for `desktop`.
    fn calls(&self, desktop: &str) -> Vec<workspace_assist::simulator::RecordedRequest> {
        self.w
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.desktop_id == desktop)
            .collect()
    }

    async fn remove_bindings(&self) {
        for name in [&self.binding_a, &self.binding_b] {
            let _ = self.bindings().delete(name, &DeleteParams::default()).await;
        }
    }
}

fn active(ra: &RemoteAssistance) -> bool {
    phase(ra) == Some(Phase::Active)
}

fn stalled_with(reason: &'static str) -> impl Fn(&RemoteAssistance) -> bool {
    move |ra| condition_reason(ra, "Stalled").as_deref() == Some(reason)
}

#[tokio::test]
async fn two_namespaces_reach_two_accounts_with_one_fetch_per_binding() {
    let mut t = Agencies::new("agency-e2e").await;
    let telemetry = Telemetry::default();
    let config = t.config();
    t.w.start_operator_with(config, telemetry.clone());
    let first = t.w.namespace.clone();
    for name in ["a1", "a2", "a3"] {
        t.create(&first, name, PROJECT_A, json!({})).await;
    }
    t.create(&t.second, "b1", PROJECT_B, json!({})).await;
    for name in ["a1", "a2", "a3"] {
        let ra = t.wait_for(&first, name, "Active", active).await;
        let status = ra.status.unwrap();
        assert_eq!(
            status.credentials_source.as_deref(),
            Some(format!("AgencyBinding/{}", t.binding_a).as_str())
        );
        assert_eq!(
            status.session.unwrap().agency_binding.as_deref(),
            Some(t.binding_a.as_str())
        );
        let user = status.agency_session_user.expect("status names the session user");
        assert_eq!(user, session_user_name(&t.binding_a));
        let seen: Vec<_> = t.calls(name).into_iter().map(|r| r.session_user).collect();
        assert!(
            !seen.is_empty() && seen.iter().all(|u| u.as_deref() == Some(user.as_str())),
            "{seen:?}"
        );
    }
    let b1 = t.wait_for(&t.second, "b1", "Active", active).await;
    assert_eq!(
        b1.status.unwrap().agency_session_user,
        Some(session_user_name(&t.binding_b))
    );
    assert_eq!(
        t.w.sim.agency_credentials(),
        (2, 0),
        "one assume_role per binding, shared by its resources"
    );
    // The bindings show who uses them, and hold a finalizer.
    eventually(T, "the bindings' status", || async {
        let a = t.bindings().get(&t.binding_a).await.unwrap();
        let status = a.status.clone().unwrap_or_default();
        status.in_use == 3
            && a.finalizers().iter().any(|f| f == BINDING_FINALIZER)
            && status.conditions.iter().any(|c| c.reason == "FetchSucceeded")
    })
    .await;
    let metrics = telemetry.metrics.render();
    let fetched = format!(
        "workspace_assist_agency_fetches_total{{binding=\"{}\",result=\"ok\"}} 1",
        t.binding_a
    );
    assert!(metrics.contains(&fetched), "{metrics}");

    // Cancel by spec, then delete: one cancel each, through the agency.
    t.api(&first)
        .patch(
            "a1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancelled": true}})),
        )
        .await
        .unwrap();
    t.wait_for(&first, "a1", "Cancelled", |ra| {
        phase(ra) == Some(Phase::Cancelled)
    })
    .await;
    for (ns, name) in [(&first, "a1"), (&first, "a2"), (&first, "a3"), (&t.second, "b1")] {
        t.delete_and_wait_gone(ns, name).await;
        assert_eq!(
            t.w.sim.count(Operation::CancelRemoteAssistance, name),
            1,
            "{name}"
        );
    }

    // No temporary secret or security token in status, Events or metrics.
    let secrets = t.w.sim.issued_temporary_secrets();
    assert!(!secrets.is_empty());
    let bindings = serde_json::to_string(&t.bindings().get(&t.binding_a).await.unwrap()).unwrap();
    let events = t.w.event_notes("a2").await.join("\n");
    let text = format!("{bindings}\n{events}\n{}", telemetry.metrics.render());
    assert_eq!(support::leaked(&text, &secrets), None);
    t.remove_bindings().await;
    t.w.stop_operator().await;
}

#[tokio::test]
async fn no_binding_or_a_binding_of_another_namespace_makes_no_call() {
    let mut t = Agencies::new("agency-none").await;
    let config = t.config();
    t.w.start_operator(config);
    let first = t.w.namespace.clone();
    // A third namespace no binding selects, and not allowed the operator's own identity.
    let third = support::fresh_namespace(&t.w.client, "agency-none").await;
    t.create(&third, "c1", PROJECT_A, json!({})).await;
    t.wait_for(
        &third,
        "c1",
        "Stalled",
        stalled_with("DefaultCredentialsNotAllowed"),
    )
    .await;
    // A resource naming the binding of another namespace.
    t.create(
        &first,
        "a-names-b",
        PROJECT_B,
        json!({"agencyBinding": t.binding_b}),
    )
    .await;
    t.wait_for(
        &first,
        "a-names-b",
        "Stalled",
        stalled_with("AgencyBindingNotAllowed"),
    )
    .await;
    // Two bindings for one namespace, and the resource names neither.
    t.put_binding(
        &format!("{}-a2", t.w.namespace),
        json!({"domainId": DOMAIN_A}),
        &first,
    )
    .await;
    t.create(&first, "ambiguous", PROJECT_A, json!({})).await;
    t.wait_for(
        &first,
        "ambiguous",
        "Stalled",
        stalled_with("AgencyBindingAmbiguous"),
    )
    .await;
    for desktop in ["c1", "a-names-b", "ambiguous"] {
        assert!(t.calls(desktop).is_empty(), "{desktop}: no cloud call");
    }
    assert_eq!(t.w.sim.agency_credentials(), (0, 0), "IAM not asked");
    for (ns, name) in [(&third, "c1"), (&first, "a-names-b"), (&first, "ambiguous")] {
        t.delete_unprovable_and_orphan(ns, name).await;
    }
    let _ = t
        .bindings()
        .delete(&format!("{}-a2", t.w.namespace), &DeleteParams::default())
        .await;
    t.remove_bindings().await;
    t.w.stop_operator().await;
}

#[tokio::test]
async fn another_accounts_project_is_refused_and_the_finalizer_stays() {
    let mut t = Agencies::new("agency-403").await;
    let config = t.config();
    t.w.start_operator(config);
    let first = t.w.namespace.clone();
    // Binding A reaches account alpha; project beta belongs to another account.
    t.create(&first, "cross", PROJECT_B, json!({})).await;
    let ra = t
        .wait_for(&first, "cross", "refused", |ra| {
            ra.status
                .as_ref()
                .and_then(|s| s.last_error.as_ref())
                .is_some_and(|e| e.http_status == Some(403))
        })
        .await;
    let error = ra.status.unwrap().last_error.unwrap();
    assert_eq!(error.error_code.as_deref(), Some("SIM.0403"), "the code verbatim");
    assert!(error.encoded_authorization_message.is_some(), "{error:?}");
    // Its deletion cannot confirm a cancel with a 403: the finalizer stays.
    let api = t.api(&first);
    api.delete("cross", &DeleteParams::default()).await.unwrap();
    eventually(T, "a refused cancel", || async {
        t.calls("cross")
            .iter()
            .any(|r| r.operation == Some(Operation::CancelRemoteAssistance) && r.status == 403)
    })
    .await;
    let held = api.get("cross").await.unwrap();
    assert!(has_finalizer(&held), "a 403 is no evidence the session is gone");
    api.patch(
        "cross",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
    )
    .await
    .unwrap();
    eventually(T, "cross gone", || async {
        api.get_opt("cross").await.unwrap().is_none()
    })
    .await;
    t.remove_bindings().await;
    t.w.stop_operator().await;
}

#[tokio::test]
async fn agency_credentials_are_refreshed_before_expiry_and_renewed_once_after_it() {
    let mut t = Agencies::new("agency-refresh").await;
    // Credentials that live 4 s: refreshed at half their life.
    t.w.sim.set_temporary_lifetime(Duration::from_secs(4));
    let config = t.config();
    t.w.start_operator(config);
    let first = t.w.namespace.clone();
    t.create(&first, "r1", PROJECT_A, json!({})).await;
    t.wait_for(&first, "r1", "Active", active).await;
    // Polls every 500 ms keep needing credentials: fetched again before they expire, and no
    // call is refused for an expired one.
    eventually(T, "a refresh before expiry", || async {
        t.w.sim.agency_credentials().0 >= 3
    })
    .await;
    assert!(
        t.calls("r1").iter().all(|r| r.status != 401),
        "refreshed before expiry: no call was refused"
    );
    // Expired behind the operator's back: one 401, one renewal, the call made again.
    t.w.sim.set_temporary_lifetime(Duration::from_secs(3600));
    eventually(T, "long-lived credentials in use", || async {
        let before = t.w.sim.agency_credentials().0;
        tokio::time::sleep(Duration::from_secs(3)).await;
        t.w.sim.agency_credentials().0 == before
    })
    .await;
    let before = t.w.sim.agency_credentials().0;
    t.w.sim.expire_temporary_credentials();
    eventually(T, "a renewal after the expiry", || async {
        t.calls("r1")
            .iter()
            .rev()
            .take_while(|r| r.status != 401)
            .any(|r| r.status == 200)
            && t.calls("r1").iter().any(|r| r.status == 401)
    })
    .await;
    // The pod identity's own credentials expired too: one fetch of each, no more.
    assert_eq!(t.w.sim.agency_credentials().0, before + 1, "renewed once");
    t.delete_and_wait_gone(&first, "r1").await;
    t.remove_bindings().await;
    t.w.stop_operator().await;
}

#[tokio::test]
async fn a_binding_in_use_stays_and_a_deselected_namespace_still_cancels() {
    let mut t = Agencies::new("agency-in-use").await;
    let config = t.config();
    t.w.start_operator(config);
    let first = t.w.namespace.clone();
    t.create(&first, "held", PROJECT_A, json!({})).await;
    t.wait_for(&first, "held", "Active", active).await;
    // The API server refuses moving a held session to another binding (the CRD's CEL rule).
    let refused = t
        .api(&first)
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"agencyBinding": t.binding_b}})),
        )
        .await
        .expect_err("spec.agencyBinding is fixed while a session is held");
    assert!(
        refused.to_string().contains("spec.agencyBinding cannot change"),
        "{refused}"
    );
    // The namespace leaves the binding's selector: new sessions stop, the held one does not.
    t.put_binding(
        &t.binding_a,
        json!({"domainId": DOMAIN_A}),
        "some-other-namespace",
    )
    .await;
    t.create(&first, "new", PROJECT_A, json!({})).await;
    t.wait_for(
        &first,
        "new",
        "Stalled",
        stalled_with("DefaultCredentialsNotAllowed"),
    )
    .await;
    assert!(t.calls("new").is_empty());
    // Deleting the binding waits for the resource that holds a session through it.
    t.bindings()
        .delete(&t.binding_a, &DeleteParams::default())
        .await
        .unwrap();
    eventually(T, "the binding marked for deletion", || async {
        t.bindings()
            .get_opt(&t.binding_a)
            .await
            .unwrap()
            .is_some_and(|b| {
                b.metadata.deletion_timestamp.is_some() && b.status.is_some_and(|s| s.in_use == 1)
            })
    })
    .await;
    // The cancel still goes through the binding.
    t.delete_and_wait_gone(&first, "held").await;
    assert_eq!(t.w.sim.count(Operation::CancelRemoteAssistance, "held"), 1);
    eventually(T, "the binding gone once unused", || async {
        t.bindings().get_opt(&t.binding_a).await.unwrap().is_none()
    })
    .await;
    t.delete_unprovable_and_orphan(&first, "new").await;
    t.remove_bindings().await;
    t.w.stop_operator().await;
}

#[tokio::test]
async fn an_agency_iam_refuses_is_asked_once_for_all_its_resources_and_backs_off() {
    let mut t = Agencies::new("agency-refused").await;
    // Account alpha has no agency of this name: IAM refuses every fetch.
    t.put_binding(
        &t.binding_a,
        json!({"domainId": DOMAIN_A, "agencyName": "no-such-agency"}),
        &t.w.namespace,
    )
    .await;
    let config = t.config();
    let started = std::time::Instant::now();
    t.w.start_operator(config);
    let first = t.w.namespace.clone();
    let names = ["f1", "f2", "f3", "f4", "f5", "f6"];
    for name in names {
        t.create(&first, name, PROJECT_A, json!({})).await;
    }
    for name in names {
        t.wait_for(&first, name, "refused by IAM", |ra| {
            condition_reason(ra, "Ready").as_deref() == Some("AgencyCredentialsFailed")
        })
        .await;
        assert!(t.calls(name).is_empty(), "{name}: no Workspace call");
    }
    let (assumed, refused) = t.w.sim.agency_credentials();
    assert_eq!(assumed, 0);
    // One fetch shared by all the resources, then asked again after 1 s, 2 s, 4 s…: within
    // `elapsed` seconds at most 2 + log2(elapsed) fetches, however many resources wait (each
    // of them asking would make at least one per resource at once).
    let elapsed = started.elapsed().as_secs_f64().max(1.0);
    let schedule = 2 + elapsed.log2().floor() as usize;
    assert!(
        refused >= 1 && refused <= schedule,
        "IAM asked {refused} times in {elapsed:.1} s for {} resources (the backoff allows {schedule})",
        names.len()
    );
    eventually(T, "the binding's failed fetch", || async {
        let b = t.bindings().get(&t.binding_a).await.unwrap();
        b.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "AgencyCredentialsFailed")
        })
    })
    .await;
    for name in names {
        t.delete_unprovable_and_orphan(&first, name).await;
    }
    t.remove_bindings().await;
    t.w.stop_operator().await;
}

/// The real binary at trace level, with pod identity from the environment as a pod gets it:
/// neither the operator's own temporary credentials nor the agency's reach its logs.
#[tokio::test]
async fn the_binary_at_trace_level_logs_no_temporary_secret() {
    use support::process::{BIN, OperatorProcess, free_port};
    let t = Agencies::new("agency-leaks").await;
    let cp = support::control_plane::shared();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let selector = format!("agency-test={}", t.w.namespace);
    let endpoint = t.w.sim.endpoint();
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["run", "--log-level", "trace", "--leader-elect", "false"])
        .args(["--metrics-address", &metrics.to_string()])
        .args([
            "--watch-label-selector",
            &selector,
            "--allowed-endpoint",
            &endpoint,
        ])
        .args([
            "--iam-endpoint",
            &endpoint,
            "--ambient-credentials",
            "pod-identity",
        ])
        .args([
            "--agency-bindings",
            "true",
            "--agency-binding-selector",
            &selector,
        ])
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HC_CONTAINER_CREDENTIALS_FULL_URI", t.w.sim.pod_identity_uri())
        .env(
            "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            t._token_dir.path().join("token"),
        );
    let op = OperatorProcess::start(command, metrics);
    let first = t.w.namespace.clone();
    t.create(&first, "l1", PROJECT_A, json!({})).await;
    let ra = t.wait_for(&first, "l1", "Active", active).await;
    assert_eq!(
        ra.status.as_ref().and_then(|s| s.agency_session_user.clone()),
        Some(session_user_name(&t.binding_a))
    );
    t.delete_and_wait_gone(&first, "l1").await;
    assert_eq!(t.w.sim.count(Operation::CancelRemoteAssistance, "l1"), 1);
    let (_, page) = op.get("/metrics").await;
    let mut secrets = t.w.sim.issued_temporary_secrets();
    assert!(
        secrets.len() >= 4,
        "the pod identity's and the agency's: {secrets:?}"
    );
    secrets.push(std::fs::read_to_string(t._token_dir.path().join("token")).unwrap());
    let status = serde_json::to_string(&ra).unwrap();
    let binding = serde_json::to_string(&t.bindings().get(&t.binding_a).await.unwrap()).unwrap();
    let logs = op.logs();
    assert!(
        logs.contains("TRACE"),
        "trace level: {}",
        &logs[..logs.len().min(2000)]
    );
    let text = format!("{logs}\n{status}\n{binding}\n{page}");
    assert_eq!(support::leaked(&text, &secrets), None);
    t.remove_bindings().await;
}
