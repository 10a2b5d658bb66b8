//! The reconcile: the finalizer flow dispatching to apply (observe, or cancel when the spec says
//! so) and cleanup (cancel before the object goes, unless orphaned).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::resource::{DeletionPolicy, FINALIZER, Phase, RemoteAssistance};
use crate::workspace::{Credentials, Disposition, Operation, Target, classify, resolve_endpoint};

use super::Context;
use super::credentials::{self, CredentialsError};
use super::error::Error;
use super::gate::Trigger;
use super::status::{self, Conclusion};

/// Annotation whose every new value re-drives a stalled resource at once.
pub const RETRY_ANNOTATION: &str = "workspace.assist.dev/retry";

/// A failed reconcile and when to try again.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    /// What failed.
    pub error: Error,
    /// When the object is reconciled again (unless something relevant changes first).
    pub retry_after: Duration,
}

/// Reconciles one RemoteAssistance.
#[tracing::instrument(skip_all, fields(namespace = ra.namespace().unwrap_or_default(), name = ra.name_any()))]
pub async fn reconcile(ra: Arc<RemoteAssistance>, ctx: Arc<Context>) -> Result<Action, Failure> {
    let uid = ra.uid().unwrap_or_default();
    let trigger = Trigger {
        generation: ra.metadata.generation,
        deleting: ra.metadata.deletion_timestamp.is_some(),
        retry_token: ra.annotations().get(RETRY_ANNOTATION).cloned(),
    };
    if let Some(wait) = ctx.gates.wait_for(&uid, &trigger, Instant::now()) {
        debug!(wait_ms = wait.as_millis() as u64, "backing off");
        return Ok(Action::requeue(wait));
    }
    let api: Api<RemoteAssistance> = Api::namespaced(ctx.client.clone(), &ra.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, ra, |event| async {
        match event {
            FinalizerEvent::Apply(ra) => apply(&api, &ra, &ctx).await,
            FinalizerEvent::Cleanup(ra) => cleanup(&api, &ra, &ctx).await,
        }
    })
    .await;
    match result {
        Ok(action) => {
            if trigger.deleting {
                ctx.forget(&uid);
            } else {
                ctx.gates.succeeded(&uid);
            }
            Ok(action)
        }
        Err(e) => {
            let error = match e {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
                other => Error::Finalizer(other.to_string()),
            };
            let retry_after = ctx.gates.failed(&uid, trigger, error.needs_human(), &ctx.config.backoff, Instant::now());
            Err(Failure { error, retry_after })
        }
    }
}

/// Requeues after the delay the reconcile chose.
pub fn error_policy(_ra: Arc<RemoteAssistance>, failure: &Failure, _ctx: Arc<Context>) -> Action {
    Action::requeue(failure.retry_after)
}

/// The object exists and holds the finalizer.
async fn apply(api: &Api<RemoteAssistance>, ra: &RemoteAssistance, ctx: &Context) -> Result<Action, Error> {
    if ra.spec.cancelled {
        if already_cancelled(ra, ctx) {
            write_status(api, ra, &Conclusion::Cancelled, 0).await?;
            if ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Cancelled) {
                // The status records it now; the process's memory is no longer needed.
                ctx.forget(&ra.uid().unwrap_or_default());
            }
            return Ok(Action::await_change());
        }
        return match cancel(ra, ctx).await {
            Ok(()) => {
                write_status(api, ra, &Conclusion::Cancelled, 1).await?;
                Ok(Action::await_change())
            }
            Err(error) => fail(api, ra, ctx, error, Operation::CancelRemoteAssistance, 1).await,
        };
    }
    observe(api, ra, ctx).await
}

/// Deletion was requested: cancel (unless orphaned or already cancelled), then let go.
async fn cleanup(api: &Api<RemoteAssistance>, ra: &RemoteAssistance, ctx: &Context) -> Result<Action, Error> {
    if deletion_policy(ra, ctx) == DeletionPolicy::Orphan {
        info!("deletion policy Orphan: leaving the cloud session alone");
        ctx.publish(ra, EventType::Normal, "Orphaned", "Deleted without cancelling the remote assistance (deletionPolicy Orphan)", "Delete");
        return Ok(Action::await_change());
    }
    if already_cancelled(ra, ctx) {
        debug!("already cancelled: releasing without a cloud call");
        return Ok(Action::await_change());
    }
    match cancel(ra, ctx).await {
        Ok(()) => Ok(Action::await_change()),
        Err(error) => fail(api, ra, ctx, error, Operation::CancelRemoteAssistance, 1).await,
    }
}

/// Reads the cloud's view of the session.
async fn observe(api: &Api<RemoteAssistance>, ra: &RemoteAssistance, ctx: &Context) -> Result<Action, Error> {
    let operation = Operation::ShowDesktopRemoteAssistanceInfo;
    let (target, creds) = match prepare(ra, ctx).await {
        Ok(prepared) => prepared,
        Err(error) => return fail(api, ra, ctx, error, operation, 0).await,
    };
    ctx.rate_limit().await;
    let conclusion = match ctx.cloud.show(&target, &creds).await {
        Ok(answer) if answer.value.in_progress() => Conclusion::Active,
        Ok(_) => Conclusion::NoAssistance,
        Err(error) => match classify(&error, &ctx.config.not_found_codes) {
            Disposition::NotFound => Conclusion::NoAssistance,
            disposition => return fail(api, ra, ctx, Error::Cloud { error, disposition }, operation, 0).await,
        },
    };
    let was_active = ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active);
    if matches!(conclusion, Conclusion::Active) && !was_active {
        ctx.publish(ra, EventType::Normal, "Active", "The remote assistance is in progress", "Observe");
    }
    write_status(api, ra, &conclusion, 0).await?;
    Ok(Action::requeue(ctx.config.poll_interval))
}

/// Calls CancelRemoteAssistance once. Ok when the cloud confirmed the cancel or that there is
/// nothing to cancel.
async fn cancel(ra: &RemoteAssistance, ctx: &Context) -> Result<(), Error> {
    let (target, creds) = prepare(ra, ctx).await?;
    ctx.rate_limit().await;
    let result = ctx.cloud.cancel(&target, &creds).await;
    let uid = ra.uid().unwrap_or_default();
    match result {
        Ok(answer) => {
            info!(request_id = answer.request_id.as_deref().unwrap_or(""), "remote assistance cancelled");
            ctx.confirm_cancelled(&uid);
            ctx.publish(ra, EventType::Normal, "Cancelled", "The cloud confirmed the cancel", "Cancel");
            Ok(())
        }
        Err(error) => match classify(&error, &ctx.config.not_found_codes) {
            Disposition::NotFound => {
                info!(
                    request_id = error.request_id().unwrap_or(""),
                    code = error.code().unwrap_or(""),
                    "nothing to cancel: the cloud has no remote assistance for this desktop"
                );
                ctx.confirm_cancelled(&uid);
                ctx.publish(ra, EventType::Normal, "NothingToCancel", "The cloud has no remote assistance in progress for this desktop", "Cancel");
                Ok(())
            }
            disposition => {
                warn!(
                    request_id = error.request_id().unwrap_or(""),
                    code = error.code().unwrap_or(""),
                    http_status = error.http_status().unwrap_or(0),
                    reason = disposition.reason(),
                    "cancel failed"
                );
                Err(Error::Cloud { error, disposition })
            }
        },
    }
}

/// Records a failed step in status and Events, and hands the error to the backoff.
async fn fail(
    api: &Api<RemoteAssistance>,
    ra: &RemoteAssistance,
    ctx: &Context,
    error: Error,
    operation: Operation,
    cancel_calls: u32,
) -> Result<Action, Error> {
    // A cancel that never reached the cloud (bad Secret, bad endpoint) is not an attempt.
    let calls = if matches!(error, Error::Cloud { .. }) { cancel_calls } else { 0 };
    let reason = error.reason();
    ctx.publish(ra, EventType::Warning, reason, &format!("{operation} failed: {error}"), operation.as_str());
    if let Err(e) = write_status(api, ra, &Conclusion::Failed { error: &error, operation }, calls).await {
        warn!(error = %e, "could not record the failure in status");
    }
    Err(error)
}

async fn write_status(api: &Api<RemoteAssistance>, ra: &RemoteAssistance, conclusion: &Conclusion<'_>, cancel_calls: u32) -> Result<(), Error> {
    let next = status::next_status(ra, conclusion, cancel_calls, Time(jiff::Timestamp::now()));
    status::write(api, ra, &next).await?;
    Ok(())
}

/// The cloud target and credentials of a resource.
async fn prepare(ra: &RemoteAssistance, ctx: &Context) -> Result<(Target, Credentials), Error> {
    let endpoint = resolve_endpoint(ra.spec.region.as_deref(), ra.spec.endpoint.as_deref()).map_err(Error::InvalidSpec)?;
    let target = Target { endpoint, project_id: ra.spec.project_id.clone(), desktop_id: ra.spec.desktop_id.clone() };
    Ok((target, load_credentials(ra, ctx).await?))
}

/// Reads the credentials the resource names, or the operator's default ones. Only Secrets in
/// the resource's own namespace can be named.
async fn load_credentials(ra: &RemoteAssistance, ctx: &Context) -> Result<Credentials, Error> {
    let (namespace, name) = match &ra.spec.credentials_secret_ref {
        Some(r) => (ra.namespace().unwrap_or_default(), r.name.clone()),
        None => ctx.config.default_credentials.clone().ok_or(CredentialsError::NotConfigured)?,
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&name)
        .await?
        .ok_or_else(|| CredentialsError::SecretNotFound(name.clone()))?;
    Ok(credentials::from_secret(&secret)?)
}

/// Whether this resource's cancel was already confirmed (status, or this process's memory when
/// the status write has not reached the cache yet).
fn already_cancelled(ra: &RemoteAssistance, ctx: &Context) -> bool {
    ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Cancelled) || ctx.was_cancelled(&ra.uid().unwrap_or_default())
}

/// The deletion policy in force for a resource.
pub fn deletion_policy(ra: &RemoteAssistance, ctx: &Context) -> DeletionPolicy {
    ra.spec.deletion_policy.unwrap_or(ctx.config.default_deletion_policy)
}
