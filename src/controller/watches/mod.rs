//! The watches that feed the reconciles: RemoteAssistances (into the controller's cache),
//! credentials Secrets (metadata only, [`secrets`]), namespaces (metadata, for their deletion
//! policy and labels); which objects a (re)list asks for ([`after_lists`]) and how the initial
//! list is made ([`streaming_lists`]). Each watch runs in a task of its own ([`relay`]).

pub(crate) mod after_lists;
pub(crate) mod secrets;
pub(crate) mod streaming_lists;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use sha2::Digest;
use tracing::{info, warn};

use super::context::Context;
use super::reconcile::invitation;
use crate::resource::RemoteAssistance;

pub(crate) type Relayed<T> = futures::channel::mpsc::Receiver<Result<T, watcher::Error>>;

/// The objects of a kind in the watched scope (one namespace, or all).
pub(crate) fn scoped<K>(ctx: &Context) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match &ctx.config.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// The watch of RemoteAssistances feeding the controller's cache, driven by its own task. The
/// cache keeps only what reconciles read ([`keep_what_reconciles_read`]).
pub(crate) fn watch_resources(
    ctx: &Context,
    streaming: bool,
) -> (
    Relayed<RemoteAssistance>,
    Store<RemoteAssistance>,
    tokio::task::JoinHandle<()>,
) {
    let api: Api<RemoteAssistance> = scoped(ctx);
    let (store, writer) = reflector::store();
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &ctx.config.label_selector {
        config = config.labels(selector);
    }
    let resources = watch_with(api, config, streaming, "RemoteAssistance")
        .modify(keep_what_reconciles_read)
        .reflect(writer);
    let (stream, task) = relay(
        after_lists::applied_after_lists(resources, store.clone()),
        "RemoteAssistance",
    );
    (stream, store, task)
}

/// The operator's own annotations (`workspace.assist.dev/…`) longer than this are kept as a
/// digest: reconciles only compare them (the retry token) or expect short values.
const MAX_KEPT_ANNOTATION: usize = 256;

/// Drops what no reconcile reads, as objects arrive in the cache, so that one object's size in
/// memory is bounded by the CRD's schema rather than by what a user puts in its metadata: the
/// managed fields, the labels but the operator's AgencyBinding label (the label selector is the
/// API server's), and every annotation
/// but the operator's own (a 256 KiB annotation on each of 500 objects otherwise takes more than
/// the Deployment's memory limit). Finalizers stay: the finalizer patch tests the whole list.
pub(crate) fn keep_what_reconciles_read(ra: &mut RemoteAssistance) {
    ra.managed_fields_mut().clear();
    ra.labels_mut()
        .retain(|key, _| key == crate::agency_binding::BINDING_LABEL);
    ra.annotations_mut()
        .retain(|key, _| key.starts_with(crate::resource::ANNOTATION_PREFIX));
    for value in ra.annotations_mut().values_mut() {
        if value.len() > MAX_KEPT_ANNOTATION {
            *value = format!("sha256:{}", hex::encode(sha2::Sha256::digest(value.as_bytes())));
        }
    }
}

/// The watch of Secrets, which only triggers reconciles: their metadata (name, resourceVersion,
/// finalizers) is enough. Invitation Secrets (one per resource, written by the operator) are
/// left out.
pub(crate) fn watch_secrets(
    ctx: &Context,
    streaming: bool,
) -> (Relayed<PartialObjectMeta<Secret>>, tokio::task::JoinHandle<()>) {
    let api: Api<PartialObjectMeta<Secret>> = scoped(ctx);
    let config = watcher::Config::default()
        .any_semantic()
        .labels(&format!("!{}", invitation::INVITATION_LABEL));
    relay(
        watch_with(api, config, streaming, "Secret").touched_objects(),
        "Secret",
    )
}

/// A watcher with the operator's backoff, starting with a streaming list when `streaming`
/// (falling back to a plain list if it stalls, see [`streaming_lists::with_stall_fallback`]).
pub(crate) fn watch_with<K>(
    api: Api<K>,
    config: watcher::Config,
    streaming: bool,
    what: &'static str,
) -> futures::stream::BoxStream<'static, watcher::Result<watcher::Event<K>>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    streaming_lists::with_stall_fallback(streaming, what, move |streaming| {
        watcher(
            api.clone(),
            streaming_lists::initial_list(config.clone(), streaming),
        )
        .backoff(watch_backoff())
        .boxed()
    })
}

/// Runs a watch (with its backoff) in a task of its own and hands its objects on; its errors
/// are logged there. The controller merges its trigger streams and does not always poll one
/// that is backing off: a watch driven by the controller can stay down for tens of seconds
/// after the API server is back. Driven by its own task, it retries on its own schedule.
pub(crate) fn relay<T: Send + 'static>(
    watch: impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    what: &'static str,
) -> (Relayed<T>, tokio::task::JoinHandle<()>) {
    use futures::SinkExt;
    let (mut tx, rx) = futures::channel::mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let mut watch = std::pin::pin!(watch);
        while let Some(item) = watch.next().await {
            match item {
                Ok(object) => {
                    if tx.send(Ok(object)).await.is_err() {
                        return;
                    }
                }
                Err(e) => warn!(error = %e, watch = what, "watch failed; retrying"),
            }
        }
    });
    (rx, task)
}

/// How the watches retry after an error: from 0.5 s, doubling, at most 5 s apart (kube's default
/// goes to 30 s), so that work resumes within seconds of the API server coming back.
pub(crate) fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .into()
}

/// Keeps the metadata of the watched namespaces (all, or the one watched) in a cache, so that a
/// deletion reads the namespace's deletion policy without an API call.
pub(crate) async fn watch_namespaces(ctx: Arc<Context>) {
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(ctx.client.clone());
    let config = match &ctx.config.namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (store, writer) = reflector::store();
    let _ = ctx.namespaces.set(store);
    let labels = std::sync::Mutex::new(std::collections::HashMap::<
        String,
        std::collections::BTreeMap<String, String>,
    >::new());
    watcher(api, config.any_semantic())
        .backoff(watch_backoff())
        .modify(|ns: &mut PartialObjectMeta<Namespace>| ns.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|event| {
            match event {
                Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => {
                    let now = ns.labels().clone();
                    let before = labels
                        .lock()
                        .expect("namespace labels")
                        .insert(ns.name_any(), now.clone());
                    if before.is_some_and(|b| b != now) {
                        redrive_namespace(&ctx, &ns.name_any());
                    }
                }
                Ok(watcher::Event::Delete(ns)) => {
                    labels.lock().expect("namespace labels").remove(&ns.name_any());
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "namespace watch"),
            }
            async {}
        })
        .await;
}

/// A namespace's labels changed: which credentials its resources may use may have changed
/// with them (`--default-credentials-namespaces`), so its resources are reconciled at once,
/// not at their next slow recheck.
pub(crate) fn redrive_namespace(ctx: &Context, namespace: &str) {
    let Some(store) = ctx.store() else { return };
    let objects: Vec<ObjectRef<RemoteAssistance>> = store
        .state()
        .iter()
        .filter(|ra| ra.namespace().as_deref() == Some(namespace))
        .map(|ra| ObjectRef::from_obj(&**ra))
        .collect();
    if !objects.is_empty() {
        info!(
            namespace,
            resources = objects.len(),
            "the namespace's labels changed: reconciling its resources"
        );
        ctx.wake(objects);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_only_the_operators_own_annotations_and_bounds_them() {
        use crate::resource::{PAUSED_ANNOTATION, RETRY_ANNOTATION};
        let mut ra = crate::resource::sample("r");
        let big = "x".repeat(256 * 1024);
        ra.annotations_mut().extend([
            ("example.com/notes".to_string(), big.clone()),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                big.clone(),
            ),
            (PAUSED_ANNOTATION.to_string(), "true".to_string()),
            (RETRY_ANNOTATION.to_string(), big.clone()),
        ]);
        ra.labels_mut().insert("team".into(), "help-desk".into());
        ra.finalizers_mut().push("example.com/other".into());
        let mut changed = ra.clone();
        changed
            .annotations_mut()
            .insert(RETRY_ANNOTATION.to_string(), format!("{big}y"));
        keep_what_reconciles_read(&mut ra);
        keep_what_reconciles_read(&mut changed);
        let kept = serde_json::to_vec(&ra).unwrap().len();
        assert!(kept < 1024, "{kept} bytes kept of a 768 KiB object");
        assert_eq!(ra.annotations()[PAUSED_ANNOTATION], "true");
        assert!(ra.labels().is_empty());
        assert_eq!(ra.finalizers(), ["example.com/other"], "finalizers stay whole");
        assert_ne!(
            ra.annotations()[RETRY_ANNOTATION],
            changed.annotations()[RETRY_ANNOTATION],
            "a long retry token is kept as a digest, so that its changes still show"
        );
    }

    #[test]
    fn watches_retry_within_seconds() {
        let delays: Vec<Duration> = watch_backoff().take(12).collect();
        assert_eq!(delays.len(), 12, "never gives up");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)), "{delays:?}");
    }
}
