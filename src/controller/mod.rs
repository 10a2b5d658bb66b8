//! The controller: watches RemoteAssistances (and the Secrets they name), reconciles each with
//! bounded concurrency, paces cloud calls per object and overall, and records status and Events.

pub(crate) mod bindings;
pub(crate) mod context;
pub(crate) mod credentials;
pub(crate) mod error;
pub(crate) mod pacing;
pub(crate) mod reconcile;
pub(crate) mod report;
pub(crate) mod watches;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, controller, watcher};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::resource::{Phase, RemoteAssistance};
use crate::telemetry::{Health, Metrics};

pub use context::Config;
use context::Context;
pub use credentials::endpoints::{EndpointPolicy, EndpointRule};
pub use credentials::selector::LabelSelector;
pub use error::{Error, StartError};
pub use pacing::gate::BackoffPolicy;
use pacing::{polls, timers};
use reconcile::deadline;
pub use reconcile::deadline::Limits;
pub use watches::streaming_lists::supported as streaming_lists_supported;
use watches::{secrets, streaming_lists};

/// Most reconciles started at once: past their gate they wait for one of `--concurrency` slots
/// (`pacing::fair`); beyond this many, kube's queue holds the rest in the order they fell due.
/// kube's runner keeps one table entry (about 1 KB) per started reconcile and its table never
/// shrinks: 1,024 cost about 6 MiB of steady memory with 10,000 resources, 128 leave enough
/// waiting to order access-ending work first among many times the 16 slots.
const WAITING_RECONCILES: u16 = 128;

/// Where the controller reports: metrics and readiness.
#[derive(Clone, Default)]
pub struct Telemetry {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
}

/// Runs the controller until `shutdown` completes; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    config: Config,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    check_label_selector(&client, &config).await?;
    let ctx = Arc::new(Context::new(client.clone(), config, telemetry.metrics.clone())?);
    log_not_found_policy(&ctx.config);
    let streaming = ctx.config.streaming_lists && streaming_lists::supported(&watches::scoped(&ctx)).await;
    let (resources, store, resources_relay) = watches::watch_resources(&ctx, streaming);
    let _ = ctx.store.set(store.clone());
    let (secret_changes, secrets_relay) = watches::watch_secrets(&ctx, streaming);
    let namespaces = tokio::spawn(watches::watch_namespaces(ctx.clone()));
    let housekeeping = tokio::spawn(keep_house(ctx.clone(), store.clone(), telemetry.clone()));
    let pin_releases = tokio::spawn(credentials::pins::release_pins_when_unused(ctx.clone()));
    let (bindings_stop, bindings_stopped) = tokio::sync::oneshot::channel::<()>();
    let bindings = ctx.config.agency_bindings.then(|| {
        bindings::start(ctx.clone(), async move {
            let _ = bindings_stopped.await;
        })
    });
    let mapper_ctx = ctx.clone();
    let polls = polls::due(ctx.observations.clone(), store.clone());
    let timers = timers::due(ctx.timers.clone());
    Controller::for_stream(resources, store.clone())
        .reconcile_on(polls)
        .reconcile_on(timers)
        // Reconciles that fall due start (up to WAITING_RECONCILES) and wait for their slot in
        // `ctx.slots` (`--concurrency`), which hands slots out access-ending work first and
        // namespaces in turn: kube's own bound runs them in the order they fell due.
        .with_config(controller::Config::default().concurrency(WAITING_RECONCILES))
        .watches_stream(secret_changes, move |secret| {
            secrets::on_secret(&mapper_ctx, &secret, &store)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move { log_reconcile(result) })
        .await;
    let _ = bindings_stop.send(());
    if let Some(bindings) = bindings {
        let _ = tokio::time::timeout(Duration::from_secs(10), bindings).await;
    }
    for task in [
        housekeeping,
        namespaces,
        resources_relay,
        secrets_relay,
        pin_releases,
    ] {
        task.abort();
    }
    Ok(())
}

/// Which answers release a finalizer, and where credentials may go, are the operator's most
/// consequential settings: say them.
fn log_not_found_policy(config: &Config) {
    let extra: Vec<String> = config.endpoints.extra.iter().map(ToString::to_string).collect();
    info!(allowed_endpoints = ?extra, "credentials are sent only to Huawei Cloud's official Workspace and IAM endpoints and to these");
    if config.not_found_codes.is_empty() {
        info!(
            "\"nothing to cancel\" is a 404 with a Workspace (WKS.*) error body only; no extra not-found codes configured"
        );
    } else {
        info!(codes = ?config.not_found_codes, "\"nothing to cancel\" is a 404 with a Workspace error body, or one of these configured not-found codes");
    }
    let default = match (&config.ambient, &config.default_credentials) {
        (Some(source), _) => format!("the operator's own identity ({})", source.kind().as_str()),
        (None, Some((ns, name))) => format!("the Secret {ns}/{name}"),
        (None, None) => "none".to_string(),
    };
    let namespaces = config.default_credentials_namespaces.as_ref().map_or_else(
        || "no namespace".to_string(),
        |s| format!("namespaces matching {s}"),
    );
    info!(default_credentials = %default, allowed = %namespaces, "resources without spec.credentialsSecretRef use the default credentials in the allowed namespaces only");
}

/// A label selector the API server refuses would leave the watch failing forever: refused at
/// start instead, with the API server's reason.
async fn check_label_selector(client: &Client, config: &Config) -> Result<(), StartError> {
    let Some(selector) = &config.label_selector else {
        return Ok(());
    };
    let api: Api<RemoteAssistance> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api
        .list_metadata(&kube::api::ListParams::default().labels(selector).limit(1))
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 400 => Err(StartError::LabelSelector {
            selector: selector.clone(),
            message: s.message,
        }),
        _ => {
            info!(selector = %selector, "reconciling only the RemoteAssistances whose labels match");
            Ok(())
        }
    }
}

/// Logs the outcome of a reconcile: passing cloud failures at info, the rest at warn.
fn log_reconcile(
    result: Result<
        (ObjectRef<RemoteAssistance>, kube::runtime::controller::Action),
        controller::Error<reconcile::Failure, watcher::Error>,
    >,
) {
    match result {
        Ok((object, _)) => debug!(%object, "reconciled"),
        Err(controller::Error::ReconcilerFailed(failure, object)) => {
            let retry_after_ms = failure.retry_after.as_millis() as u64;
            let reason = failure.error.reason();
            let request_id = failure
                .error
                .cloud_error()
                .and_then(|e| e.request_id())
                .unwrap_or_default()
                .to_string();
            if matches!(failure.error, Error::Cloud { .. }) && !failure.error.needs_human() {
                info!(%object, error = %failure, reason, request_id, retry_after_ms, "reconcile failed; retrying with backoff");
            } else {
                warn!(%object, error = %failure, reason, request_id, retry_after_ms, "reconcile failed");
            }
        }
        Err(controller::Error::ObjectNotFound(_)) => {}
        Err(e) => warn!(error = %e, "controller"),
    }
}

/// Marks the instance ready once the cache is synced; then, every 5 s, keeps the per-phase
/// gauges current, and every minute drops what is kept for Secrets no resource uses any more
/// and hands free heap pages back.
async fn keep_house(ctx: Arc<Context>, store: Store<RemoteAssistance>, telemetry: Telemetry) {
    // Asked again every second: the store's readiness is a oneshot channel that wakes only the
    // last of several waiters (the controller waits on it too), so a single wait can sleep on.
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(Ok(())) => {
                telemetry
                    .health
                    .ready
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    for round in 0u64.. {
        if round % 12 == 0 {
            ctx.forget_unused_secrets(&store);
            ctx.forget_objects_gone(&store);
        }
        // Every 30 s (and once the cache is built), free heap pages go back to the system.
        if round % 6 == 0 {
            crate::memory::release_free_memory();
        }
        report_resources(&store, &telemetry, ctx.config.stuck_deleting_after);
        ctx.report_waiting();
        ctx.credentials
            .breakers
            .prune_and_report(&ctx.metrics, std::time::Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Sets the per-phase gauges and the count of resources stuck deleting.
fn report_resources(store: &Store<RemoteAssistance>, telemetry: &Telemetry, stuck_after: Duration) {
    let now = jiff::Timestamp::now();
    let mut counts: Vec<(Phase, i64)> = Phase::ALL.iter().map(|p| (*p, 0)).collect();
    let mut stuck = 0;
    let mut past_deadline = 0;
    for ra in store.state() {
        let expired = ra
            .status
            .as_ref()
            .and_then(|s| s.expires_at.as_ref())
            .is_some_and(|t| t.0 <= now);
        if expired && deadline::holds_session(&ra) {
            past_deadline += 1;
        }
        if let Some(phase) = ra.status.as_ref().and_then(|s| s.phase)
            && let Some(c) = counts.iter_mut().find(|(p, _)| *p == phase)
        {
            c.1 += 1;
        }
        if ra
            .metadata
            .deletion_timestamp
            .as_ref()
            .is_some_and(|d| now.duration_since(d.0).unsigned_abs() > stuck_after)
        {
            stuck += 1;
        }
    }
    telemetry.metrics.set_resources(&counts, stuck, past_deadline);
}
