//! The reconcile: the finalizer flow dispatching to apply (start, adopt or observe a session; or
//! cancel it when the spec says so) and cleanup (cancel before the object goes, unless orphaned).

pub(crate) mod deadline;
pub(crate) mod holders;
pub(crate) mod invitation;
pub(crate) mod recall;
pub(crate) mod release;
mod sub_steps;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::resource::{
    AssistanceStatus, DELETION_POLICY_ANNOTATION, DeletionPolicy, FINALIZER, PAUSED_ANNOTATION, Phase,
    RemoteAssistance, RemoteAssistanceStatus, SessionBinding,
};
use crate::workspace::{
    CloudError, Disposition, HumanReason, Operation, PasswordLogin, SessionState, ShowResponse, Target,
    TransportKind, classify, iam_endpoint_for_region, resolve_endpoint,
};

use crate::text::{MAX_MESSAGE_BYTES, MAX_SHORT_BYTES, bounded_opt};

use crate::agency_binding::{AgencyBinding, BINDING_LABEL, session_user_name};
use crate::controller::context::Context;
use crate::controller::credentials::agencies::{self, AgencyBindingError};
use crate::controller::credentials::pins::{self, may_need_cancel};
use crate::controller::credentials::secret::{self, CredentialsError, SecretCredentials};
use crate::controller::error::{Error, Result};
use crate::controller::pacing::cloud_calls::{self, CallCredentials};
use crate::controller::pacing::fair::{Claimant, Urgency};
use crate::controller::pacing::gate::{API_RETRY_MAX, BackoffPolicy, ChangeMarkers, Gate};
use crate::controller::reconcile::holders::{DesktopKey, Holder};
use crate::controller::report::events::EventType;
use crate::controller::report::status::{self, Conclusion};
use release::{AfterShow, Evidence};

/// A failed reconcile and when to try again.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    /// What failed.
    pub error: Error,
    /// When the object is reconciled again (unless something relevant changes first).
    pub retry_after: Duration,
}

/// Reconciles one RemoteAssistance: the pre-checks, then the finalizer's dispatch to
/// `Step::apply` or `Step::cleanup`, then the outcome for the backoff and the metrics.
#[tracing::instrument(skip_all, fields(namespace = ra.namespace().unwrap_or_default(), resource = ra.name_any()))]
pub async fn reconcile(ra: Arc<RemoteAssistance>, ctx: Arc<Context>) -> Result<Action, Failure> {
    let started = Instant::now();
    let markers = ChangeMarkers::of(&ra, is_paused(&ra));
    // Boxed, like the work in the slot below: a reconcile waiting for its turn keeps only a few
    // pointers (every object that falls due has one waiting, see `pacing::fair`).
    if let Some((wait, result, reason)) = Box::pin(wait_for_gate(&ra, &ctx, &markers)).await {
        ctx.metrics.reconciled(result, reason, started.elapsed());
        return Ok(Action::requeue(wait));
    }
    // A reconcile slot, in turn: access-ending work first, then one namespace after another.
    let claimant = Claimant::of(&ra, jiff::Timestamp::now());
    let waiting_since = Instant::now();
    let _slot = ctx.slots.acquire(&claimant).await;
    ctx.metrics.waited(
        "slots",
        claimant.urgency == Urgency::EndsAccess,
        waiting_since.elapsed(),
    );
    Box::pin(reconcile_in_slot(ra, ctx, markers, started)).await
}

/// The reconcile past its gate, in its slot.
async fn reconcile_in_slot(
    ra: Arc<RemoteAssistance>,
    ctx: Arc<Context>,
    markers: ChangeMarkers,
    started: Instant,
) -> Result<Action, Failure> {
    // The credentials this attempt uses, as they are before it: read after a failure, the Secret
    // may already hold new data, and a failure recorded against the new data would wait out
    // the whole backoff instead of trying the new credentials.
    let credentials = ctx.credentials_fingerprint(&ra).await;
    let object = ra.clone();
    let api: Api<RemoteAssistance> = Api::namespaced(ctx.client.clone(), &ra.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, ra, |event| async {
        match event {
            FinalizerEvent::Apply(ra) => Step::new(&api, &ra, &ctx).apply().await,
            FinalizerEvent::Cleanup(ra) => Step::new(&api, &ra, &ctx).cleanup().await,
        }
    })
    .await;
    let uid = object.uid().unwrap_or_default();
    let error = match result {
        Ok(action) => {
            if markers.deleting {
                ctx.forget(&uid);
            } else {
                ctx.gates.succeeded(&uid);
            }
            ctx.metrics.reconciled("success", "Reconciled", started.elapsed());
            return Ok(action);
        }
        Err(e) => match finalizer_error(e, &api, &object, &ctx).await {
            Ok(wait) => {
                ctx.metrics
                    .reconciled("success", "CacheCatchingUp", started.elapsed());
                return Ok(Action::requeue(wait));
            }
            Err(error) => error,
        },
    };
    let policy = retry_policy(&error, ctx.config.backoff);
    let retry_after = ctx.gates.failed(
        &uid,
        markers,
        credentials,
        error.needs_human(),
        &policy,
        Instant::now(),
    );
    ctx.metrics.reconciled("error", error.reason(), started.elapsed());
    if !error.needs_human() {
        ctx.metrics.retry(error.reason());
    }
    Err(Failure { error, retry_after })
}

/// Why not to act on this object now, if so: how long to wait, and the result and reason for
/// the metrics.
async fn wait_for_gate(
    ra: &RemoteAssistance,
    ctx: &Context,
    markers: &ChangeMarkers,
) -> Option<(Duration, &'static str, &'static str)> {
    if ctx.recall.is_older_than_own_write(ra) {
        // The cache has not caught up with this process's last status write: acting on it
        // would repeat work (the watch event of that write triggers a reconcile soon).
        debug!("cache older than our last write; waiting for it");
        return Some((Duration::from_secs(1), "success", "CacheCatchingUp"));
    }
    let uid = ra.uid().unwrap_or_default();
    let wait = match ctx.gates.check(&uid, markers, Instant::now()) {
        Gate::Open => return None,
        Gate::Closed(wait) => wait,
        // Only new credentials can fix the failure: the Secret's own version also moves with
        // metadata writes (the operator's pin among them).
        Gate::SecretChanged { wait, recorded }
            if recorded.is_some() && ctx.credentials_fingerprint(ra).await == recorded =>
        {
            ctx.gates.secret_unchanged(&uid);
            wait
        }
        Gate::SecretChanged { .. } => return None,
    };
    debug!(wait_ms = wait.as_millis() as u64, "backing off");
    Some((wait, "backoff", "BackingOff"))
}

/// What a failed finalizer run means: Ok(wait) when the object changed since it was read (the
/// finalizer patches test the finalizers they saw, status writes the resourceVersion: a 422 or
/// [`Error::Stale`]; retried quietly when the cache has the newer version), else the error. A
/// failed finalizer patch is recorded on the object as the cache has it.
async fn finalizer_error(
    e: finalizer::Error<Error>,
    api: &Api<RemoteAssistance>,
    object: &RemoteAssistance,
    ctx: &Context,
) -> Result<Duration> {
    let patch = |what: &str, e| {
        Error::kubernetes(
            "patch",
            "RemoteAssistance",
            format!(
                "{}/{} ({what})",
                object.namespace().unwrap_or_default(),
                object.name_any()
            ),
            e,
        )
    };
    let error = match e {
        finalizer::Error::ApplyFailed(Error::Stale) | finalizer::Error::CleanupFailed(Error::Stale) => {
            debug!("the object changed since it was read; retrying when the cache has the newer version");
            return Ok(Duration::from_millis(500));
        }
        finalizer::Error::AddFinalizer(kube::Error::Api(s))
        | finalizer::Error::RemoveFinalizer(kube::Error::Api(s))
            if s.code == 422 =>
        {
            debug!("finalizer patch raced a newer version of the object; retrying when the cache has it");
            return Ok(Duration::from_millis(500));
        }
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) => {
            let failure = patch("add the finalizer", e);
            Step::new(api, object, ctx)
                .report(failure, Operation::CreateRemoteAssistance, 0)
                .await
        }
        finalizer::Error::RemoveFinalizer(e) => {
            let failure = patch("remove the finalizer", e);
            Step::new(api, object, ctx)
                .report(failure, Operation::CancelRemoteAssistance, 0)
                .await
        }
        other => Error::Finalizer(Box::new(other)),
    };
    if let Error::Kubernetes(failure) = &error {
        ctx.metrics
            .kubernetes_error(failure.verb, failure.kind, failure.status());
    }
    Err(error)
}

/// The backoff for a failure. Failures talking to the Kubernetes API (an outage, a conflict)
/// cost the cloud nothing and pass on their own: their backoff stops growing early, so work
/// resumes soon after the API server is back.
fn retry_policy(error: &Error, configured: BackoffPolicy) -> BackoffPolicy {
    match error {
        Error::Kubernetes(_) => BackoffPolicy {
            max: configured.max.min(API_RETRY_MAX),
            ..configured
        },
        _ => configured,
    }
}

/// Requeues after the delay the reconcile chose.
pub fn error_policy(_ra: Arc<RemoteAssistance>, failure: &Failure, _ctx: Arc<Context>) -> Action {
    Action::requeue(failure.retry_after)
}

/// Whether the paused annotation is set.
pub fn is_paused(ra: &RemoteAssistance) -> bool {
    ra.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The deletion policy in force: the resource (spec, then annotation), then its namespace's
/// annotation, then the operator's default.
pub fn deletion_policy(
    ra: &RemoteAssistance,
    namespace_annotation: Option<&str>,
    default: DeletionPolicy,
) -> DeletionPolicy {
    ra.own_deletion_policy()
        .or_else(|| namespace_annotation?.parse().ok())
        .unwrap_or(default)
}

/// A step that failed: the error, the call that failed, and the cancel calls it made.
struct StepFailure {
    error: Error,
    operation: Operation,
    cancel_calls: u32,
}

impl StepFailure {
    fn show(error: Error) -> Self {
        StepFailure {
            error,
            operation: Operation::ShowDesktopRemoteAssistanceInfo,
            cancel_calls: 0,
        }
    }

    fn cancel(error: Error) -> Self {
        StepFailure {
            error,
            operation: Operation::CancelRemoteAssistance,
            cancel_calls: 1,
        }
    }
}

/// One reconcile of one object: the object as it is now (updated by this step's own status
/// writes) and what it needs.
struct Step<'a> {
    api: &'a Api<RemoteAssistance>,
    ctx: &'a Context,
    ra: RemoteAssistance,
    /// Why the credentials Secret could not be pinned in this step (reason, message).
    pin_problem: Option<(&'static str, String)>,
    /// A failure of this step was recorded in status and an Event already.
    reported: bool,
    /// Where this step's credentials came from (status.credentialsSource), once known.
    credentials_source: Option<String>,
    /// The AgencyBinding this step's calls go through, once chosen.
    agency: Option<String>,
    /// The status as the API server has it: what a write compares with (the step's working
    /// copy in `ra` may hold facts not written yet, such as a session just created).
    stored: Option<RemoteAssistanceStatus>,
    /// Whose turn this step's cloud calls wait for (`pacing::fair`).
    claimant: Claimant,
}

/// status.credentialsSource of credentials from the Secret the resource names.
const SOURCE_SECRET: &str = "Secret";
/// status.credentialsSource of credentials from the operator's default Secret.
const SOURCE_DEFAULT_SECRET: &str = "DefaultSecret";

impl<'a> Step<'a> {
    fn new(api: &'a Api<RemoteAssistance>, ra: &RemoteAssistance, ctx: &'a Context) -> Self {
        Step {
            api,
            ctx,
            ra: ra.clone(),
            pin_problem: None,
            reported: false,
            credentials_source: None,
            agency: None,
            stored: ra.status.clone(),
            claimant: Claimant::of(ra, jiff::Timestamp::now()),
        }
    }

    fn uid(&self) -> String {
        self.ra.uid().unwrap_or_default()
    }

    fn phase(&self) -> Option<Phase> {
        self.ra.status.as_ref().and_then(|s| s.phase)
    }

    /// The object exists and holds the finalizer.
    async fn apply(mut self) -> Result<Action> {
        let result = self.apply_steps().await;
        self.report_kubernetes_failure(result, Operation::ShowDesktopRemoteAssistanceInfo)
            .await
    }

    /// Deletion was requested: cancel (unless orphaned, paused or already done), then let go.
    async fn cleanup(mut self) -> Result<Action> {
        let result = self.cleanup_steps().await;
        self.report_kubernetes_failure(result, Operation::CancelRemoteAssistance)
            .await
    }

    /// A failure a step returned without recording it (a Kubernetes API call it needed, the
    /// invitation Secret's name taken, an unreadable TTL) shows on the resource (status and an
    /// Event) like a cloud failure, not only in the log. A stale read and a paused deletion
    /// are not failures.
    async fn report_kubernetes_failure(
        &mut self,
        result: Result<Action>,
        operation: Operation,
    ) -> Result<Action> {
        match result {
            Err(error) if !self.reported && !matches!(error, Error::Stale | Error::Paused) => {
                self.fail(error, operation, 0).await
            }
            other => other,
        }
    }

    /// Ends the session this resource held, or proves it is over, by the one release rule
    /// ([`release`]): a resource the cloud once reported `Closed` is looked at again first (a
    /// Show whose body has no error shape) and cancelled only if that proves nothing; every
    /// other one is cancelled. Returns how many cancel calls it made and the evidence.
    async fn end_session(
        &self,
        target: &Target,
        creds: &CallCredentials,
    ) -> Result<(u32, Evidence), StepFailure> {
        if self.phase() == Some(Phase::Closed) {
            let shown = self.show(target, creds).await.map_err(StepFailure::show)?;
            let held_id = self.binding().and_then(|b| b.share_space_id);
            match release::after_show(&shown, held_id.as_deref(), self.desktop_held_by_another()) {
                AfterShow::Over(evidence) => {
                    info!(
                        evidence = evidence.reason(),
                        "the cloud confirms the session is over: nothing to cancel"
                    );
                    self.ctx.recall.confirm_cancelled(&self.uid());
                    let note = match evidence {
                        Evidence::AnotherSession => {
                            "Another session is in progress on the desktop: the one this resource held is over; it is not cancelled"
                        }
                        _ => "The cloud confirms the session is closed",
                    };
                    self.ctx
                        .publish(&self.ra, EventType::Normal, "NothingToCancel", note, "Cancel");
                    return Ok((0, evidence));
                }
                AfterShow::Cancel => info!("a closed session is not confirmed closed: cancelling"),
            }
        }
        let evidence = self.cancel(target, creds).await.map_err(StepFailure::cancel)?;
        Ok((1, evidence))
    }

    /// Starts, adopts or observes the session. Whether a session is in progress comes from the
    /// answer's status alone ([`SessionState`]); `Closed` only from an explicit `CLOSE`.
    async fn start_adopt_or_observe(&mut self, target: &Target, creds: &CallCredentials) -> Result<Action> {
        let shown = match self.show(target, creds).await {
            Ok(shown) => shown,
            Err(error) => {
                return self
                    .fail(error, Operation::ShowDesktopRemoteAssistanceInfo, 0)
                    .await;
            }
        };
        let held = self.binding().is_some();
        match shown.session_state() {
            SessionState::InProgress => return self.record_held_session(target, &shown, false).await,
            SessionState::Closed if held => {
                info!("the cloud reports the session closed");
                self.ctx.publish(
                    &self.ra,
                    EventType::Normal,
                    "ClosedRemotely",
                    "The session was closed in the cloud",
                    "Observe",
                );
                let facts = self.merged_facts(&shown, false);
                self.record_closed(facts).await?;
                return Ok(Action::await_change());
            }
            SessionState::Unknown if held => {
                warn!("the cloud's answer shows no recognisable session; keeping the session as held");
                self.write(&Conclusion::SessionUnknown, 0, |_| {}).await?;
                self.ctx
                    .observations
                    .observed_now(&self.uid(), self.ra.metadata.generation);
                return Ok(Action::await_change());
            }
            // Nothing held, and nothing in progress shown: start one, or wait for one.
            SessionState::Closed | SessionState::Unknown => {}
        }
        if !self.ra.spec.initiate {
            self.write(&Conclusion::NoAssistance, 0, |_| {}).await?;
            self.ctx
                .observations
                .observed_now(&self.uid(), self.ra.metadata.generation);
            return Ok(Action::await_change());
        }
        let ctx = self.ctx;
        let created = match cloud_calls::call(
            ctx,
            &self.claimant,
            Operation::CreateRemoteAssistance,
            creds,
            |c| async move { ctx.cloud.create(target, &c).await },
        )
        .await
        {
            Ok(answer) => answer,
            Err(error) => {
                let disposition = classify(&error, &self.ctx.config.not_found_codes);
                if disposition == Disposition::NeedsHuman(HumanReason::Rejected) {
                    // The cloud refused the request itself: a session may have started since
                    // the Show (the desktop's user asked for help). Look again and adopt it.
                    let shown = match self.show(target, creds).await {
                        Ok(shown) => shown,
                        Err(error) => {
                            return self
                                .fail(error, Operation::ShowDesktopRemoteAssistanceInfo, 0)
                                .await;
                        }
                    };
                    if shown.in_progress() {
                        info!(
                            code = error.code().unwrap_or(""),
                            "create refused: a session started meanwhile, adopting it"
                        );
                        return self.record_held_session(target, &shown, false).await;
                    }
                }
                return self
                    .fail(
                        Error::from_lookup(error, disposition),
                        Operation::CreateRemoteAssistance,
                        0,
                    )
                    .await;
            }
        };
        info!(
            request_id = created.request_id.as_deref().unwrap_or(""),
            share_space_id = created.value.share_space_id.as_deref().unwrap_or(""),
            "remote assistance created"
        );
        self.ctx.publish(
            &self.ra,
            EventType::Normal,
            "Created",
            "Started a remote assistance for the desktop",
            "Create",
        );
        // What the cloud said about the new session, and where it lives, go into the step's
        // next status write, whether the show below succeeds (Active) or fails (the failure is
        // recorded with them): from here on the resource holds a session.
        let facts = AssistanceStatus {
            share_space_id: bounded_opt(created.value.share_space_id.as_deref(), MAX_SHORT_BYTES),
            status: bounded_opt(created.value.status.as_deref(), MAX_SHORT_BYTES),
            initiator_type: bounded_opt(created.value.initiator_type.as_deref(), MAX_SHORT_BYTES),
            created_by_operator: true,
            ..AssistanceStatus::default()
        };
        let binding = self.new_binding(target, facts.share_space_id.clone());
        let status = self.ra.status.get_or_insert_with(Default::default);
        status.assistance = Some(facts);
        status.session = Some(binding);
        let shown = match self.show(target, creds).await {
            Ok(shown) => shown,
            Err(error) => {
                return self
                    .fail(error, Operation::ShowDesktopRemoteAssistanceInfo, 0)
                    .await;
            }
        };
        self.record_held_session(target, &shown, true).await
    }

    /// The session is in progress: record where it lives, its facts and its secret parts, and
    /// poll again later. The record of holding it (status.session, with when it was first
    /// seen) is written even when its invitation Secret cannot be, so its deadline counts from
    /// first sight whatever happens next.
    async fn record_held_session(
        &mut self,
        target: &Target,
        shown: &ShowResponse,
        just_created: bool,
    ) -> Result<Action> {
        let was_active = self.phase() == Some(Phase::Active)
            && self
                .ra
                .status
                .as_ref()
                .is_some_and(|s| s.invitation_secret_name.is_some());
        let facts = self.merged_facts(shown, just_created);
        let mut binding = self.binding().unwrap_or_else(|| self.new_binding(target, None));
        if binding.share_space_id.is_some()
            && facts.share_space_id.is_some()
            && binding.share_space_id != facts.share_space_id
        {
            // Another session than the one held (the held one ended and the desktop's user
            // started a new one): held from now.
            binding.held_since = Some(Time(jiff::Timestamp::now()));
        }
        binding.share_space_id = facts.share_space_id.clone().or(binding.share_space_id);
        binding
            .held_since
            .get_or_insert_with(|| Time(jiff::Timestamp::now()));
        let max = deadline::enforced_max_duration(&self.ra, &self.ctx.config.limits);
        let expires_at = max
            .as_ref()
            .and_then(|m| deadline::expires_at(&facts, binding.held_since.as_ref(), m));
        let capped = max.as_ref().and_then(deadline::MaxDuration::capped_note);
        match expires_at {
            Some(at) => self.ctx.timers.set(
                &self.uid(),
                kube::runtime::reflector::ObjectRef::from_obj(&self.ra),
                at,
            ),
            None => self.ctx.timers.clear(&self.uid()),
        }
        {
            let status = self.ra.status.get_or_insert_with(Default::default);
            status.assistance = Some(facts);
            status.session = Some(binding);
            status.expires_at = expires_at.map(Time);
        }
        let secret_name = invitation::apply_secret(self.ctx, &self.ra, shown, just_created).await?;
        if !was_active && !just_created {
            self.ctx.publish(
                &self.ra,
                EventType::Normal,
                "Adopted",
                "A remote assistance already in progress for the desktop is now held by this resource",
                "Observe",
            );
        }
        let was_capped = self
            .ra
            .status
            .as_ref()
            .and_then(|s| s.max_duration_capped.clone());
        if let Some(note) = capped.as_ref().filter(|n| Some(*n) != was_capped.as_ref()) {
            self.ctx.publish(
                &self.ra,
                EventType::Warning,
                "MaxDurationCapped",
                &format!("spec.maxDuration: {note}"),
                "Observe",
            );
        }
        self.write(&Conclusion::Active, 0, |s| {
            s.invitation_secret_name = Some(secret_name);
            s.max_duration_capped = capped;
        })
        .await?;
        self.ctx
            .observations
            .observed_now(&self.uid(), self.ra.metadata.generation);
        Ok(Action::await_change())
    }

    /// The facts of a Show answer, keeping what earlier answers said of the same session where
    /// this one leaves it out (every field is optional): an id once known is kept.
    fn merged_facts(&self, shown: &ShowResponse, just_created: bool) -> AssistanceStatus {
        let old = self
            .ra
            .status
            .as_ref()
            .and_then(|s| s.assistance.clone())
            .unwrap_or_default();
        let mut facts = assistance_from_show(shown, just_created || self.created_by_operator(shown));
        let same_session = facts.share_space_id.is_none()
            || old.share_space_id.is_none()
            || facts.share_space_id == old.share_space_id;
        if same_session {
            facts.share_space_id = facts.share_space_id.or(old.share_space_id);
            facts.share_space_name = facts.share_space_name.or(old.share_space_name);
            facts.create_time = facts.create_time.or(old.create_time);
            facts.initiator_type = facts.initiator_type.or(old.initiator_type);
            facts.created_by_operator |= old.created_by_operator && just_created;
            facts.held_since = old.held_since;
        }
        facts
    }

    /// The record of a session this step opens or adopts at `target`.
    fn new_binding(&self, target: &Target, share_space_id: Option<String>) -> SessionBinding {
        SessionBinding {
            endpoint: target.endpoint.to_string(),
            project_id: target.project_id.clone(),
            desktop_id: target.desktop_id.clone(),
            share_space_id,
            credentials_secret_name: self
                .ra
                .spec
                .credentials_secret_ref
                .as_ref()
                .map(|r| r.name.clone()),
            agency_binding: self.agency.clone(),
            held_since: Some(Time(jiff::Timestamp::now())),
        }
    }

    /// Where the session this resource holds lives: status.session, or, for a resource whose
    /// status predates it but shows a held session, the spec's place.
    fn binding(&self) -> Option<SessionBinding> {
        let status = self.ra.status.as_ref()?;
        if let Some(b) = &status.session {
            return Some(b.clone());
        }
        let over = matches!(status.phase, Some(Phase::Cancelled)) || status.deadline_exceeded_at.is_some();
        if !status.records_a_session() || over {
            return None;
        }
        let a = status.assistance.as_ref()?;
        let endpoint =
            resolve_endpoint(self.ra.spec.region.as_deref(), self.ra.spec.endpoint.as_deref()).ok()?;
        Some(SessionBinding {
            endpoint: endpoint.to_string(),
            project_id: self.ra.spec.project_id.clone(),
            desktop_id: self.ra.spec.desktop_id.clone(),
            share_space_id: a.share_space_id.clone(),
            credentials_secret_name: self
                .ra
                .spec
                .credentials_secret_ref
                .as_ref()
                .map(|r| r.name.clone()),
            agency_binding: self.ra.spec.agency_binding.clone(),
            held_since: a.held_since.clone(),
        })
    }

    /// The spec field that no longer says where the held session lives, if one changed.
    fn binding_changed(&self) -> Option<&'static str> {
        let b = self.ra.status.as_ref()?.session.as_ref()?;
        let spec = &self.ra.spec;
        let endpoint = resolve_endpoint(spec.region.as_deref(), spec.endpoint.as_deref()).ok();
        if endpoint.as_ref().map(url::Url::as_str) != Some(b.endpoint.as_str()) {
            return Some(if spec.endpoint.is_some() {
                "spec.endpoint"
            } else {
                "spec.region"
            });
        }
        if spec.credentials_secret_ref.as_ref().map(|r| r.name.as_str())
            != b.credentials_secret_name.as_deref()
        {
            return Some("spec.credentialsSecretRef");
        }
        // Unset: the binding was chosen by its selector, and naming none changes nothing.
        if spec.agency_binding.is_some() && spec.agency_binding != b.agency_binding {
            return Some("spec.agencyBinding");
        }
        None
    }

    /// The desktop this resource would hold or holds.
    fn desktop(&self) -> Option<DesktopKey> {
        match self.binding() {
            Some(b) => DesktopKey::new(&b.endpoint, &b.project_id, &b.desktop_id),
            None => DesktopKey::of_spec(&self.ra),
        }
    }

    /// Claims the desktop the spec names for this resource; the other holder when it cannot.
    fn claim_desktop(&self) -> Option<Holder> {
        let key = self.desktop()?;
        self.ctx.claims.claim(&key, &self.ra, self.ctx.store()).err()
    }

    /// Whether another resource holds this resource's desktop.
    fn desktop_held_by_another(&self) -> bool {
        self.desktop()
            .is_some_and(|key| self.ctx.claims.holder(&key, &self.ra, self.ctx.store()).is_some())
    }

    /// This resource's session is over (or it never held one): another resource may hold the
    /// desktop now, and those waiting for it are woken.
    fn let_go_of_desktop(&self) {
        let woken = self.ctx.claims.let_go(&self.uid(), self.desktop().as_ref());
        self.ctx.wake(woken);
    }

    /// Another resource holds the desktop: wait for it (Stalled, reason DesktopInUse) without
    /// any call; woken when it lets go, and rechecked at the poll interval.
    async fn desktop_in_use(&mut self, holder: &Holder) -> Result<Action> {
        let namespace = self.ra.namespace().unwrap_or_default();
        let told = holder.describe_to(&namespace);
        if self
            .ra
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::STALLED))
            .is_none_or(|c| c.reason != "DesktopInUse")
        {
            self.ctx.publish(
                &self.ra,
                EventType::Warning,
                "DesktopInUse",
                &format!("Waiting: {told}"),
                "Observe",
            );
        }
        if let Some(key) = self.desktop() {
            self.ctx
                .claims
                .wait_for(key, kube::runtime::reflector::ObjectRef::from_obj(&self.ra));
        }
        self.write(&Conclusion::DesktopInUse { holder: told }, 0, |s| {
            s.assistance = None;
            s.invitation_secret_name = None;
        })
        .await?;
        Ok(Action::requeue(self.ctx.config.poll_interval))
    }

    /// Whether the session this resource holds has passed its deadline (computed from the spec
    /// as it is now, the status, the cloud's time and the operator's maximum). A deadline still
    /// ahead is queued.
    fn deadline_passed(&self) -> bool {
        self.passed_or_queued(deadline::deadline(&self.ra, &self.ctx.config.limits))
    }

    /// Whether the operator's own maximum has passed for the held session (queued otherwise).
    fn admin_deadline_passed(&self) -> bool {
        self.passed_or_queued(deadline::admin_deadline(&self.ra, &self.ctx.config.limits))
    }

    /// Whether `at` has come; one still ahead is queued, so that the reconcile comes then.
    fn passed_or_queued(&self, at: Option<jiff::Timestamp>) -> bool {
        let Some(at) = at else { return false };
        if at <= jiff::Timestamp::now() {
            return true;
        }
        self.ctx.timers.set(
            &self.uid(),
            kube::runtime::reflector::ObjectRef::from_obj(&self.ra),
            at,
        );
        false
    }

    /// The session's time is up: cancel it as spec.cancelled would, and finish the object.
    async fn cancel_at_deadline(&mut self) -> Result<Action> {
        info!("the session reached its maximum duration: cancelling it");
        let (target, creds) = match self.prepare().await {
            Ok(p) => p,
            Err(error) => return self.fail(error, Operation::CancelRemoteAssistance, 0).await,
        };
        let calls = match self.end_session(&target, &creds).await {
            Ok((calls, _)) => calls,
            Err(failed) => {
                return self
                    .fail(failed.error, failed.operation, failed.cancel_calls)
                    .await;
            }
        };
        self.ctx.metrics.cancelled("deadline");
        let max = deadline::enforced_max_duration(&self.ra, &self.ctx.config.limits)
            .map(|m| deadline::show(m.duration))
            .unwrap_or_default();
        self.ctx.publish(
            &self.ra,
            EventType::Normal,
            "DeadlineExceeded",
            &format!("The remote assistance reached its maximum duration ({max}) and was cancelled"),
            "Cancel",
        );
        self.ctx.timers.clear(&self.uid());
        let now = Time(jiff::Timestamp::now());
        self.record_session_ended(&Conclusion::DeadlineExceeded, calls, |s| {
            s.deadline_exceeded_at = Some(now);
        })
        .await?;
        Ok(Action::await_change())
    }

    /// A finished object past its TTL is deleted (with preconditions: a newer version, with a
    /// changed TTL perhaps, is looked at again); one whose TTL is ahead is queued. Returns
    /// whether it was deleted.
    async fn delete_if_expired(&mut self) -> Result<bool> {
        let Some(at) = deadline::delete_at(&self.ra, &self.ctx.config.limits).map_err(Error::InvalidSpec)?
        else {
            return Ok(false);
        };
        let object = kube::runtime::reflector::ObjectRef::from_obj(&self.ra);
        if at > jiff::Timestamp::now() {
            self.ctx.timers.set(&self.uid(), object, at);
            return Ok(false);
        }
        let preconditions = kube::api::Preconditions {
            uid: self.ra.uid(),
            resource_version: self.ra.resource_version(),
        };
        let params = kube::api::DeleteParams {
            preconditions: Some(preconditions),
            ..kube::api::DeleteParams::default()
        };
        match self.api.delete(&self.ra.name_any(), &params).await {
            Ok(_) => {
                info!("finished longer than its ttlAfterFinished: deleted");
                self.ctx.publish(
                    &self.ra,
                    EventType::Normal,
                    "Expired",
                    "Deleted: finished longer ago than its ttlAfterFinished",
                    "Delete",
                );
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Err(Error::Stale),
            Err(e) => {
                let object = format!(
                    "{}/{} (its ttlAfterFinished passed)",
                    self.ra.namespace().unwrap_or_default(),
                    self.ra.name_any()
                );
                Err(Error::kubernetes("delete", "RemoteAssistance", object, e))
            }
        }
    }

    /// Whether this resource's operator created the session the cloud shows.
    fn created_by_operator(&self, shown: &ShowResponse) -> bool {
        self.ra
            .status
            .as_ref()
            .and_then(|s| s.assistance.as_ref())
            .is_some_and(|a| {
                a.created_by_operator
                    && a.share_space_id.is_some()
                    && a.share_space_id == shown.share_space_id
            })
    }

    async fn show(&self, target: &Target, creds: &CallCredentials) -> Result<ShowResponse> {
        let ctx = self.ctx;
        match cloud_calls::call(
            ctx,
            &self.claimant,
            Operation::ShowDesktopRemoteAssistanceInfo,
            creds,
            |c| async move { ctx.cloud.show(target, &c).await },
        )
        .await
        {
            Ok(answer) => Ok(answer.value),
            // Only a body without an error shape says anything about the session; "not found"
            // here means the desktop is missing.
            Err(error) => {
                let disposition = classify(&error, &self.ctx.config.not_found_codes);
                Err(Error::from_lookup(error, disposition))
            }
        }
    }

    /// Calls CancelRemoteAssistance once. The evidence when the cloud confirmed the cancel (a
    /// 204) or that there is nothing to cancel (a 404 Workspace error, or a code the operator
    /// configured): [`release::after_cancel`].
    async fn cancel(&self, target: &Target, creds: &CallCredentials) -> Result<Evidence> {
        let ctx = self.ctx;
        let result = cloud_calls::call(
            ctx,
            &self.claimant,
            Operation::CancelRemoteAssistance,
            creds,
            |c| async move { ctx.cloud.cancel(target, &c).await },
        )
        .await;
        let error = match result {
            Ok(answer) => {
                return Ok(self.cancel_confirmed(
                    Evidence::CancelConfirmed,
                    answer.request_id.as_deref(),
                    "",
                ));
            }
            Err(error) => error,
        };
        if let Some(evidence) = release::after_cancel(Err(&error), &ctx.config.not_found_codes) {
            return Ok(self.cancel_confirmed(evidence, error.request_id(), error.code().unwrap_or("")));
        }
        let disposition = classify(&error, &ctx.config.not_found_codes);
        warn!(
            request_id = error.request_id().unwrap_or(""),
            code = error.code().unwrap_or(""),
            http_status = error.http_status().unwrap_or(0),
            reason = disposition.reason(),
            "cancel failed"
        );
        Err(Error::cloud(error, disposition))
    }

    /// Remembers and announces a cancel the cloud confirmed.
    fn cancel_confirmed(&self, evidence: Evidence, request_id: Option<&str>, code: &str) -> Evidence {
        let note = match evidence {
            Evidence::NothingToCancel => {
                info!(
                    request_id = request_id.unwrap_or(""),
                    code, "nothing to cancel: the cloud has no remote assistance for this desktop"
                );
                "The cloud has no remote assistance in progress for this desktop"
            }
            _ => {
                info!(
                    request_id = request_id.unwrap_or(""),
                    "remote assistance cancelled"
                );
                "The cloud confirmed the cancel"
            }
        };
        self.ctx.recall.confirm_cancelled(&self.uid());
        self.ctx
            .publish(&self.ra, EventType::Normal, evidence.reason(), note, "Cancel");
        evidence
    }

    /// Records a failed step in status and Events, and hands the error to the backoff.
    async fn fail(&mut self, error: Error, operation: Operation, cancel_calls: u32) -> Result<Action> {
        Err(self.report(error, operation, cancel_calls).await)
    }

    /// Records a failure in status (when it can) and an Event, and returns it.
    async fn report(&mut self, error: Error, operation: Operation, cancel_calls: u32) -> Error {
        self.reported = true;
        let not_leader = matches!(
            error.cloud_error(),
            Some(CloudError::Transport {
                kind: TransportKind::NotLeader,
                ..
            })
        );
        if not_leader || matches!(error, Error::Stale) {
            // Another leader is in charge, or a newer version of the object is on its way:
            // nothing to record from here.
            return error;
        }
        // A cancel that never reached the cloud (bad Secret, bad endpoint) is not an attempt.
        let calls = if error.cloud_error().is_some() {
            cancel_calls
        } else {
            0
        };
        let reason = error.reason();
        let (note, action) = match &error {
            Error::Kubernetes(failure) => (error.to_string(), failure.verb),
            _ => (format!("{operation} failed: {error}"), operation.as_str()),
        };
        self.ctx
            .publish(&self.ra, EventType::Warning, reason, &note, action);
        if let Err(e) = self
            .write(
                &Conclusion::Failed {
                    error: &error,
                    operation,
                },
                calls,
                |_| {},
            )
            .await
        {
            warn!(error = %e, "could not record the failure in status");
        }
        error
    }

    /// Writes the status the step concluded (when it changed) and keeps it for later writes of
    /// the same step.
    async fn write(
        &mut self,
        conclusion: &Conclusion<'_>,
        cancel_calls: u32,
        edit: impl FnOnce(&mut RemoteAssistanceStatus),
    ) -> Result<()> {
        let now = Time(jiff::Timestamp::now());
        let mut next = status::next_status(&self.ra, conclusion, cancel_calls, now.clone());
        edit(&mut next);
        if let Some(source) = &self.credentials_source {
            next.credentials_source = Some(source.clone());
            next.agency_session_user = self.agency.as_deref().map(session_user_name);
        }
        if let Some((reason, message)) = &self.pin_problem {
            let old = self
                .ra
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            status::pin_failed(&mut next, old, reason, message, self.ra.metadata.generation, &now);
        }
        let written = status::write(self.api, &self.ra, self.stored.as_ref(), &next)
            .await
            .map_err(|e| {
                if status::is_stale(&e) {
                    return Error::Stale;
                }
                let object = format!(
                    "{}/{} (write its status)",
                    self.ra.namespace().unwrap_or_default(),
                    self.ra.name_any()
                );
                Error::kubernetes("patch", "RemoteAssistance", object, e)
            })?;
        if let Some(version) = written {
            self.ctx.recall.wrote(&self.uid(), &version);
            // The next write of this step tests against the version just written.
            self.ra.metadata.resource_version = Some(version);
        }
        self.stored = Some(next.clone());
        self.ra.status = Some(next);
        Ok(())
    }

    /// The cancel is confirmed (`calls`: the cancel calls this reconcile made): the session's
    /// secret parts go, the status says Cancelled, and the credentials pin goes when no other
    /// resource needs it.
    async fn record_cancelled(&mut self, calls: u32) -> Result<()> {
        self.record_session_ended(&Conclusion::Cancelled, calls, |_| {})
            .await
    }

    /// A cancel is confirmed, by spec or at the deadline (`conclusion`, `edit` for what only
    /// that one records): polls stop, the session's secret parts go, the status records it, the
    /// credentials pin goes when no other resource needs it, and the desktop is let go.
    async fn record_session_ended(
        &mut self,
        conclusion: &Conclusion<'_>,
        calls: u32,
        edit: impl FnOnce(&mut RemoteAssistanceStatus),
    ) -> Result<()> {
        self.ctx.observations.forget(&self.uid());
        invitation::delete_secret(self.ctx, &self.ra).await?;
        self.write(conclusion, calls, |s| {
            s.invitation_secret_name = None;
            // The cloud closes a cancelled session.
            if let Some(a) = s.assistance.as_mut() {
                a.status = Some(crate::workspace::STATUS_CLOSE.to_string());
            }
            edit(s);
        })
        .await?;
        self.unpin_credentials().await?;
        // The status records it now; the memory of the cancel is no longer needed.
        self.ctx.recall.forget_cancel(&self.uid());
        self.let_go_of_desktop();
        Ok(())
    }

    /// The session was closed in the cloud by someone else: its secret parts go and the status
    /// says Closed. The credentials pin stays: a later cancel or deletion confirms with the
    /// cloud before the finalizer comes off.
    async fn record_closed(&mut self, facts: AssistanceStatus) -> Result<()> {
        self.ctx.observations.forget(&self.uid());
        self.ctx.timers.clear(&self.uid());
        invitation::delete_secret(self.ctx, &self.ra).await?;
        self.write(&Conclusion::Closed, 0, |s| {
            s.invitation_secret_name = None;
            s.assistance = Some(facts);
        })
        .await?;
        // The desktop is free for another holder (this resource still confirms with a Show
        // before its finalizer comes off, and never cancels another's session).
        self.let_go_of_desktop();
        Ok(())
    }

    /// The object goes without a cloud call, on `evidence` of the release rule (Orphan, a
    /// cancel already confirmed, a desktop another resource holds): its invitation Secret and
    /// the credentials pin go with it.
    async fn let_go_without_cancel(&self, evidence: Evidence) -> Result<Action> {
        debug!(evidence = evidence.reason(), "releasing without a cloud call");
        invitation::delete_secret(self.ctx, &self.ra).await?;
        self.unpin_credentials().await?;
        self.let_go_of_desktop();
        Ok(Action::await_change())
    }

    /// Drops the credentials pin when no other resource needs the Secret.
    async fn unpin_credentials(&self) -> Result<()> {
        if let Some(r) = &self.ra.spec.credentials_secret_ref {
            pins::release_if_unused(
                self.ctx,
                &self.ra.namespace().unwrap_or_default(),
                &r.name,
                &self.uid(),
            )
            .await?;
        }
        Ok(())
    }

    /// spec.cancelled is set and the cancel is already confirmed.
    fn spec_cancelled_done(&self) -> bool {
        self.ra.spec.cancelled && self.already_done()
    }

    /// The cancel was confirmed (status, or this process's memory when the status write has not
    /// reached the cache yet). `Closed` is not enough: it is confirmed by [`Step::end_session`].
    fn already_done(&self) -> bool {
        self.phase() == Some(Phase::Cancelled) || self.ctx.recall.was_cancelled(&self.uid())
    }

    async fn namespace_policy(&self) -> Result<Option<String>> {
        if self.ra.spec.deletion_policy.is_some()
            || self.ra.annotations().contains_key(DELETION_POLICY_ANNOTATION)
        {
            return Ok(None);
        }
        self.ctx
            .namespace_deletion_policy(&self.ra.namespace().unwrap_or_default())
            .await
    }

    /// The cloud target and credentials; pins the credentials Secret while a cancel may need it.
    /// A held session is reached where it was opened, with the credentials it was opened with
    /// (status.session), whatever the spec says now; a namespace that lost the right to the
    /// operator's default credentials may still end (and confirm the end of) a session it holds
    /// with them, never start one.
    async fn prepare(&mut self) -> Result<(Target, CallCredentials)> {
        let binding = self.binding();
        let spec = &self.ra.spec;
        let (target, secret_name) = match &binding {
            Some(b) => {
                let endpoint = url::Url::parse(&b.endpoint).map_err(|e| {
                    Error::InvalidSpec(format!(
                        "status.session.endpoint {:?} is not a URL: {e}",
                        b.endpoint
                    ))
                })?;
                (
                    Target {
                        endpoint,
                        project_id: b.project_id.clone(),
                        desktop_id: b.desktop_id.clone(),
                    },
                    b.credentials_secret_name.clone(),
                )
            }
            None => {
                let endpoint = resolve_endpoint(spec.region.as_deref(), spec.endpoint.as_deref())
                    .map_err(Error::InvalidSpec)?;
                (
                    Target {
                        endpoint,
                        project_id: spec.project_id.clone(),
                        desktop_id: spec.desktop_id.clone(),
                    },
                    spec.credentials_secret_ref.as_ref().map(|r| r.name.clone()),
                )
            }
        };
        if !self.ctx.config.endpoints.allows(&target.endpoint) {
            return Err(Error::EndpointNotAllowed(format!("endpoint {}", target.endpoint)));
        }
        if secret_name.is_none()
            && let Some(agency) = self.agency_for(binding.as_ref()).await?
        {
            let name = agency.name_any();
            if binding.is_none() {
                agencies::allows_project(&agency, &target.project_id)?;
            }
            self.credentials_source = Some(format!("AgencyBinding/{name}"));
            self.agency = Some(name.clone());
            self.label_with_binding(&name).await?;
            let credentials = self.ctx.agency_credentials(&agency).await?;
            return Ok((
                target,
                CallCredentials::Agency {
                    binding: name,
                    credentials,
                },
            ));
        }
        let (namespace, name) = match &secret_name {
            Some(name) => (self.ra.namespace().unwrap_or_default(), name.clone()),
            None => {
                let ambient = self.ctx.credentials.ambient.as_ref();
                let default = self.ctx.config.default_credentials.clone();
                if ambient.is_none() && default.is_none() {
                    return Err(CredentialsError::NotConfigured.into());
                }
                // The operator's own credentials start sessions for the namespaces its admin
                // chose only.
                let namespace = self.ra.namespace().unwrap_or_default();
                if binding.is_none() && !self.ctx.may_use_default_credentials(&namespace).await? {
                    return Err(Error::DefaultCredentialsNotAllowed(namespace));
                }
                if let Some(ambient) = ambient {
                    self.credentials_source = Some(ambient.kind().as_str().to_string());
                    let creds = ambient
                        .credentials(self.ctx.cloud.http())
                        .await
                        .map_err(Error::CredentialsSource)?;
                    return Ok((target, CallCredentials::Ambient(creds)));
                }
                self.credentials_source = Some(SOURCE_DEFAULT_SECRET.to_string());
                default.ok_or(CredentialsError::NotConfigured)?
            }
        };
        if secret_name.is_some() {
            self.credentials_source = Some(SOURCE_SECRET.to_string());
        }
        let secret = self
            .ctx
            .secret(&namespace, &name)
            .await
            .map_err(|e| {
                Error::kubernetes(
                    "get",
                    "Secret",
                    format!("{namespace}/{name} (the credentials)"),
                    e,
                )
            })?
            .ok_or_else(|| CredentialsError::SecretNotFound(name.clone()))?;
        // Only a Secret that holds credentials is pinned: naming a TLS or ServiceAccount-token
        // Secret must not let anyone block its deletion.
        let creds = self.call_credentials(&secret, &name)?;
        if secret_name.is_some() && may_need_cancel(&self.ra) {
            self.pin_credentials(&secret, &name).await;
        }
        Ok((target, creds))
    }

    /// The AgencyBinding this step's calls go through, if any: the one a held session was
    /// reached through (whether or not it still selects the namespace: a cancel is never
    /// stopped by a selector), else, for a resource without a credentials Secret, the one it
    /// names or the one that selects its namespace ([`agencies::choose`]).
    async fn agency_for(&self, held: Option<&SessionBinding>) -> Result<Option<Arc<AgencyBinding>>> {
        if let Some(held) = held {
            return match &held.agency_binding {
                Some(name) => Ok(Some(self.ctx.agency_binding(name).await?)),
                None => Ok(None),
            };
        }
        let named = self.ra.spec.agency_binding.as_deref();
        if !self.ctx.config.agency_bindings {
            return match named {
                Some(name) => Err(AgencyBindingError::Disabled(name.to_string()).into()),
                None => Ok(None),
            };
        }
        let namespace = self.ra.namespace().unwrap_or_default();
        let labels = self
            .ctx
            .namespace_labels(&namespace, "its labels, for AgencyBindings")
            .await?;
        let bindings = self.ctx.agency_bindings().await;
        Ok(agencies::choose(&bindings, named, &namespace, &labels)?)
    }

    /// Labels the resource with the binding it uses, before any call through it: the binding's
    /// users are found by this label (by any shard), so that the binding is not deleted while
    /// one of them may still need it.
    async fn label_with_binding(&mut self, binding: &str) -> Result<()> {
        if self.ra.labels().get(BINDING_LABEL).map(String::as_str) == Some(binding) {
            return Ok(());
        }
        let patch = serde_json::json!({ "metadata": { "labels": { BINDING_LABEL: binding } } });
        let name = self.ra.name_any();
        let patched = self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| {
                Error::kubernetes(
                    "patch",
                    "RemoteAssistance",
                    format!(
                        "{}/{name} (the label of its AgencyBinding)",
                        self.ra.namespace().unwrap_or_default()
                    ),
                    e,
                )
            })?;
        self.ra.metadata.labels = patched.metadata.labels;
        self.ra.metadata.resource_version = patched.metadata.resource_version;
        Ok(())
    }

    /// The credentials a call needs, from the Secret `name`.
    fn call_credentials(&self, secret: &Secret, name: &str) -> Result<CallCredentials> {
        let spec = &self.ra.spec;
        Ok(match secret::from_secret(secret)? {
            SecretCredentials::Direct(c) => CallCredentials::Direct(c),
            SecretCredentials::Password {
                domain_name,
                username,
                password,
                iam_endpoint,
            } => {
                let iam_endpoint = match (iam_endpoint, &self.ctx.config.iam_endpoint, &spec.region) {
                    (Some(e), _, _) => {
                        let url = url::Url::parse(&e).map_err(|err| {
                            Error::InvalidSpec(format!("iamEndpoint of Secret {name} is not a URL: {err}"))
                        })?;
                        if !self.ctx.config.endpoints.allows(&url) {
                            return Err(Error::EndpointNotAllowed(format!(
                                "iamEndpoint {url} of Secret {name}"
                            )));
                        }
                        url
                    }
                    (None, Some(e), _) => e.clone(),
                    (None, None, Some(region)) => {
                        iam_endpoint_for_region(region).map_err(Error::InvalidSpec)?
                    }
                    (None, None, None) => {
                        return Err(CredentialsError::NoIamEndpoint(name.to_string()).into());
                    }
                };
                CallCredentials::Login(PasswordLogin {
                    iam_endpoint,
                    domain_name,
                    username,
                    password,
                    project_id: spec.project_id.clone(),
                })
            }
        })
    }

    /// Pins the credentials Secret. A failure does not stop the cancel, but shows: without the
    /// pin, deleting the namespace may delete the Secret before the cancel that needs it.
    async fn pin_credentials(&mut self, secret: &Secret, name: &str) {
        if let Err(error) = pins::pin(self.ctx, secret).await {
            warn!(error = %error, secret = %name, "could not pin the credentials Secret");
            if let Error::Kubernetes(f) = &error {
                self.ctx.metrics.kubernetes_error(f.verb, f.kind, f.status());
            }
            let message = format!(
                "{error}; deleting the namespace may delete the Secret before the cancel that needs it"
            );
            self.ctx.publish(
                &self.ra,
                EventType::Warning,
                "CredentialsPinFailed",
                &message,
                "Pin",
            );
            self.pin_problem = Some((error.reason(), message));
        }
    }
}

/// The non-secret facts of a Show answer.
fn assistance_from_show(shown: &ShowResponse, created_by_operator: bool) -> AssistanceStatus {
    AssistanceStatus {
        share_space_id: bounded_opt(shown.share_space_id.as_deref(), MAX_SHORT_BYTES),
        share_space_name: bounded_opt(shown.share_space_name.as_deref(), MAX_SHORT_BYTES),
        status: bounded_opt(shown.status.as_deref(), MAX_SHORT_BYTES),
        initiator_type: None,
        create_time: bounded_opt(shown.create_time.as_deref(), MAX_SHORT_BYTES),
        failed_reason: bounded_opt(shown.failed_reason.as_deref(), MAX_MESSAGE_BYTES),
        created_by_operator,
        held_since: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ra(policy: Option<DeletionPolicy>, annotation: Option<&str>) -> RemoteAssistance {
        let mut ra = crate::resource::sample("x");
        ra.spec.deletion_policy = policy;
        if let Some(a) = annotation {
            ra.annotations_mut()
                .insert(DELETION_POLICY_ANNOTATION.into(), a.into());
        }
        ra
    }

    #[test]
    fn api_server_failures_back_off_briefly_others_as_configured() {
        let configured = BackoffPolicy::default();
        let outage = Error::kubernetes(
            "get",
            "Secret",
            "ns/credentials",
            kube::Error::Api(
                kube::core::Status::failure("unavailable", "ServiceUnavailable")
                    .with_code(503)
                    .boxed(),
            ),
        );
        assert_eq!(retry_policy(&outage, configured).max, API_RETRY_MAX);
        assert_eq!(
            retry_policy(&Error::InvalidSpec("x".into()), configured),
            configured
        );
    }

    #[test]
    fn deletion_policy_precedence() {
        use DeletionPolicy::*;
        let d = Cancel;
        assert_eq!(deletion_policy(&ra(None, None), None, d), Cancel);
        assert_eq!(
            deletion_policy(&ra(None, None), None, Orphan),
            Orphan,
            "operator flag"
        );
        assert_eq!(
            deletion_policy(&ra(None, None), Some("Orphan"), d),
            Orphan,
            "namespace over flag"
        );
        assert_eq!(
            deletion_policy(&ra(None, Some("Cancel")), Some("Orphan"), Orphan),
            Cancel,
            "resource annotation over namespace"
        );
        assert_eq!(
            deletion_policy(&ra(Some(Orphan), Some("Cancel")), Some("Cancel"), d),
            Orphan,
            "spec over all"
        );
        assert_eq!(
            deletion_policy(&ra(None, Some("bogus")), Some("Orphan"), d),
            Orphan,
            "an unknown value is ignored"
        );
    }
}

#[cfg(test)]
mod waiting_cost {
    /// Every reconcile that falls due waits for its slot as a future (`pacing::fair`): with
    /// 100,000 resources at start-up, its size is what waiting costs.
    #[test]
    fn a_reconcile_waiting_for_its_slot_is_small() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _runtime = rt.enter();
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let ctx = crate::controller::context::Context::new(client, Default::default(), Default::default());
        let ra = std::sync::Arc::new(crate::resource::sample("x"));
        let waiting = super::reconcile(ra, std::sync::Arc::new(ctx.unwrap()));
        let size = std::mem::size_of_val(&waiting);
        assert!(size <= 1024, "a waiting reconcile takes {size} bytes");
    }
}
