//! The AgencyBindings' own loop: a binding in use keeps its finalizer (Crossplane's
//! `ProviderConfigUsage` is the model), and its status says how many resources use it and how
//! its last fetch of credentials went.
//!
//! Its users are the RemoteAssistances labelled with it ([`BINDING_LABEL`], put on before the
//! first call through it), listed from the API server rather than this shard's cache, so that
//! with sharding no shard lets a binding go that another shard's resources still need.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::agency_binding::{
    AgencyBinding, AgencyBindingStatus, BINDING_FINALIZER, BINDING_LABEL, session_user_name,
};
use crate::resource::{FINALIZER, Phase, RemoteAssistance};

use super::context::Context;
use super::error::{Error, Result};

/// How often a binding's use is counted again while it is not being deleted.
const RECOUNT: Duration = Duration::from_secs(60);

/// How often a binding being deleted checks whether its last user let go.
const RECHECK_DELETION: Duration = Duration::from_secs(5);

/// Starts the bindings' loop, which runs until `shutdown` completes. The bindings' cache is the
/// context's from the moment this returns: no RemoteAssistance reconcile can see "no binding"
/// because the watch had not started (it waits for the first list instead).
pub(crate) fn start(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let api: Api<AgencyBinding> = Api::all(ctx.client.clone());
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &ctx.config.agency_binding_selector {
        config = config.labels(selector);
    }
    // Every fetch's outcome re-writes the bindings' status (there are few bindings).
    let fetches = futures::stream::unfold(ctx.agency_fetches.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let controller = Controller::new(api, config).reconcile_all_on(fetches);
    let _ = ctx.bindings.set(controller.store());
    tokio::spawn(async move {
        controller
            .graceful_shutdown_on(shutdown)
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                match result {
                    Ok(_) | Err(controller::Error::ObjectNotFound(_)) => {}
                    // Already logged by the error policy.
                    Err(controller::Error::ReconcilerFailed(..)) => {}
                    Err(e) => warn!(error = %e, "AgencyBindings' loop"),
                }
            })
            .await;
    })
}

fn error_policy(_: Arc<AgencyBinding>, error: &Error, _: Arc<Context>) -> Action {
    warn!(error = %error, "AgencyBinding reconcile failed: retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Whether a RemoteAssistance may still need its binding: it holds the operator's finalizer and
/// either holds a session or has not finished (it may start one). A Failed resource counts too:
/// a person sees the binding in use, rather than a session nobody can cancel.
pub fn needs_binding(ra: &RemoteAssistance) -> bool {
    let holds_finalizer = ra.finalizers().iter().any(|f| f == FINALIZER);
    let status = ra.status.as_ref();
    let holds_session = status.is_some_and(|s| s.session.is_some());
    let finished = status
        .and_then(|s| s.phase)
        .is_some_and(|p| matches!(p, Phase::Cancelled | Phase::Closed));
    holds_finalizer && (holds_session || !finished)
}

async fn reconcile(binding: Arc<AgencyBinding>, ctx: Arc<Context>) -> Result<Action> {
    let name = binding.name_any();
    let api: Api<AgencyBinding> = Api::all(ctx.client.clone());
    let users: Api<RemoteAssistance> = match &ctx.config.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let listed = users
        .list(&ListParams::default().labels(&format!("{BINDING_LABEL}={name}")))
        .await
        .map_err(|e| {
            Error::kubernetes(
                "list",
                "RemoteAssistance",
                format!("labelled {BINDING_LABEL}={name}"),
                e,
            )
        })?;
    let in_use = listed.items.iter().filter(|ra| needs_binding(ra)).count();
    let has_finalizer = binding.finalizers().iter().any(|f| f == BINDING_FINALIZER);
    if binding.metadata.deletion_timestamp.is_some() {
        if in_use == 0 {
            if has_finalizer {
                set_finalizer(&api, &binding, false).await?;
                info!(binding = %name, "no RemoteAssistance needs the AgencyBinding any more: it may go");
            }
            ctx.agencies.retain(|b| b != name);
            return Ok(Action::await_change());
        }
        write_status(&api, &binding, &ctx, in_use).await?;
        return Ok(Action::requeue(RECHECK_DELETION));
    }
    if !has_finalizer {
        set_finalizer(&api, &binding, true).await?;
    }
    write_status(&api, &binding, &ctx, in_use).await?;
    Ok(Action::requeue(RECOUNT))
}

/// Adds or removes the binding's finalizer (a JSON patch tested against the list as read).
async fn set_finalizer(api: &Api<AgencyBinding>, binding: &AgencyBinding, on: bool) -> Result<()> {
    let mut finalizers: Vec<String> = binding.finalizers().to_vec();
    finalizers.retain(|f| f != BINDING_FINALIZER);
    if on {
        finalizers.push(BINDING_FINALIZER.to_string());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        { "op": "test", "path": "/metadata/finalizers", "value": binding.finalizers() },
        { "op": "replace", "path": "/metadata/finalizers", "value": finalizers },
    ]))
    .expect("a JSON patch");
    let patch = if binding.metadata.finalizers.is_none() {
        serde_json::from_value(serde_json::json!([
            { "op": "add", "path": "/metadata/finalizers", "value": finalizers },
        ]))
        .expect("a JSON patch")
    } else {
        patch
    };
    api.patch(
        &binding.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(|e| {
        Error::kubernetes(
            "patch",
            "AgencyBinding",
            format!("{} (its finalizer)", binding.name_any()),
            e,
        )
    })?;
    Ok(())
}

/// The binding's status as this operator sees it now.
fn next_status(binding: &AgencyBinding, ctx: &Context, in_use: usize) -> AgencyBindingStatus {
    let name = binding.name_any();
    let old = binding.status.clone().unwrap_or_default();
    let last = ctx.agencies.last_fetch(&name);
    let (status, reason, message) = match &last {
        None => (
            "Unknown",
            "NotFetchedYet",
            "no RemoteAssistance has needed its credentials yet".to_string(),
        ),
        Some(f) => match &f.failure {
            None => (
                "True",
                "FetchSucceeded",
                "the last fetch of temporary credentials worked".to_string(),
            ),
            Some(why) => (
                "False",
                "AgencyCredentialsFailed",
                crate::text::bounded(why, 1024).into_owned(),
            ),
        },
    };
    let now = Time(jiff::Timestamp::now());
    let transition = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    AgencyBindingStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: binding.metadata.generation,
            last_transition_time: transition,
        }],
        in_use: u32::try_from(in_use).unwrap_or(u32::MAX),
        session_user: Some(session_user_name(&name)),
        last_fetch_time: last.map(|f| Time(f.at)).or(old.last_fetch_time),
        observed_generation: binding.metadata.generation,
    }
}

async fn write_status(
    api: &Api<AgencyBinding>,
    binding: &AgencyBinding,
    ctx: &Context,
    in_use: usize,
) -> Result<()> {
    let next = next_status(binding, ctx, in_use);
    if binding.status.as_ref() == Some(&next) {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": next });
    api.patch_status(
        &binding.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| {
        Error::kubernetes(
            "patch",
            "AgencyBinding",
            format!("{} (its status)", binding.name_any()),
            e,
        )
    })?;
    Ok(())
}
