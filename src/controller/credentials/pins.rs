//! The credentials pin: a finalizer on a credentials Secret while a RemoteAssistance may still
//! need it to cancel, so that deleting a namespace cannot delete the Secret before the cancels
//! that need it. Released as soon as no resource needs it.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::resource::{DeletionPolicy, Phase, RemoteAssistance, SECRET_FINALIZER};

use crate::controller::context::Context;
use crate::controller::credentials::index::SecretKey;
use crate::controller::error::{Error, Result};

/// Puts the pin finalizer on a credentials Secret that a resource may still need.
pub(crate) async fn pin(ctx: &Context, secret: &Secret) -> Result<()> {
    let what = format!(
        "{}/{} (pin the credentials)",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    try_pin(ctx, secret)
        .await
        .map_err(|(verb, e)| Error::kubernetes(verb, "Secret", what, e))
}

async fn try_pin(ctx: &Context, secret: &Secret) -> Result<(), (&'static str, kube::Error)> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &secret.namespace().unwrap_or_default());
    let mut current = secret.clone();
    for _ in 0..5 {
        if current.finalizers().iter().any(|f| f == SECRET_FINALIZER)
            || current.metadata.deletion_timestamp.is_some()
        {
            return Ok(());
        }
        let mut finalizers = current.finalizers().to_vec();
        finalizers.push(SECRET_FINALIZER.to_string());
        // The resourceVersion makes this a compare-and-swap: other finalizers are kept.
        let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": current.resource_version() } });
        match api
            .patch(
                &current.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                info!(secret = %current.name_any(), "credentials Secret pinned until no RemoteAssistance needs it to cancel");
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                match api.get_opt(&current.name_any()).await.map_err(|e| ("get", e))? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(("patch", e)),
        }
    }
    Ok(())
}

/// Removes the pin from Secret `namespace/name` when no resource other than `except_uid`
/// may still need it to cancel.
pub(crate) async fn release_if_unused(
    ctx: &Context,
    namespace: &str,
    name: &str,
    except_uid: &str,
) -> Result<()> {
    let failed = |verb, e| {
        Error::kubernetes(
            verb,
            "Secret",
            format!("{namespace}/{name} (release the credentials pin)"),
            e,
        )
    };
    // The watch knows whether the Secret carries a pin at all: if not, there is nothing to
    // release and no need to look through every resource.
    if ctx
        .secret_index
        .known_unpinned(&(namespace.to_string(), name.to_string()))
    {
        return Ok(());
    }
    // `find` stops at the first resource that needs it, without copying the cache.
    let still_needed = ctx.store().is_some_and(|store| {
        store
            .find(|ra| {
                ra.uid().as_deref() != Some(except_uid)
                    && ra.namespace().as_deref() == Some(namespace)
                    && ra
                        .spec
                        .credentials_secret_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
                    && may_need_cancel(ra)
                    && !ctx.recall.was_cancelled(&ra.uid().unwrap_or_default())
            })
            .is_some()
    });
    if still_needed {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    for _ in 0..5 {
        let Some(secret) = api.get_opt(name).await.map_err(|e| failed("get", e))? else {
            return Ok(());
        };
        if !secret.finalizers().iter().any(|f| f == SECRET_FINALIZER) {
            return Ok(());
        }
        let finalizers: Vec<&String> = secret
            .finalizers()
            .iter()
            .filter(|f| *f != SECRET_FINALIZER)
            .collect();
        let patch =
            json!({ "metadata": { "finalizers": finalizers, "resourceVersion": secret.resource_version() } });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(secret = %name, "credentials Secret released");
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(failed("patch", e)),
        }
    }
    Ok(())
}

/// The queue of pinned Secrets being deleted, filled by the Secret watch and drained by
/// [`release_pins_when_unused`] (the watch's mapper only maps; it spawns nothing).
pub(crate) struct PinReleases {
    tx: tokio::sync::mpsc::UnboundedSender<SecretKey>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<SecretKey>>>,
}

impl Default for PinReleases {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        PinReleases {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl PinReleases {
    /// Queues a Secret (ignored once the task is gone: the operator is stopping).
    pub(crate) fn send(&self, key: SecretKey) {
        let _ = self.tx.send(key);
    }
}

/// Releases the pin of each queued Secret once no resource needs it; failures are logged and
/// counted (the next change of the Secret, or a resource's own cleanup, tries again).
pub(crate) async fn release_pins_when_unused(ctx: std::sync::Arc<Context>) {
    let Some(mut queue) = ctx.pin_releases.rx.lock().expect("pin releases").take() else {
        return;
    };
    while let Some((namespace, name)) = queue.recv().await {
        if let Err(e) = release_if_unused(&ctx, &namespace, &name, "").await {
            if let Error::Kubernetes(f) = &e {
                ctx.metrics.kubernetes_error(f.verb, f.kind, f.status());
            }
            warn!(error = %e, secret = %name, "could not release the credentials Secret");
        }
    }
}

/// Whether a resource may still have to cancel with its credentials: not cancelled yet (a
/// `Closed` one still confirms with the cloud before it goes), and not marked Orphan on the
/// resource itself (the namespace and operator defaults are not consulted here: pinning too
/// long is safe, releasing too early is not).
pub fn may_need_cancel(ra: &RemoteAssistance) -> bool {
    let done = ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Cancelled);
    let orphan_on_resource = ra.own_deletion_policy() == Some(DeletionPolicy::Orphan);
    !done
        && !orphan_on_resource
        && (ra.metadata.deletion_timestamp.is_none()
            || ra.finalizers().iter().any(|f| f == crate::resource::FINALIZER))
}

#[cfg(test)]
mod tests {
    use super::may_need_cancel;
    use crate::resource::{DELETION_POLICY_ANNOTATION, DeletionPolicy, RemoteAssistance};

    fn ra(spec_policy: Option<DeletionPolicy>, annotation: Option<&str>) -> RemoteAssistance {
        let mut ra: RemoteAssistance = serde_json::from_value(serde_json::json!({
            "apiVersion": "workspace.assist.dev/v1alpha1",
            "kind": "RemoteAssistance",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"projectId": "p", "desktopId": "d", "region": "cn-north-4"},
        }))
        .unwrap();
        ra.spec.deletion_policy = spec_policy;
        if let Some(a) = annotation {
            ra.metadata.annotations = Some([(DELETION_POLICY_ANNOTATION.to_string(), a.to_string())].into());
        }
        ra
    }

    #[test]
    fn the_pin_follows_the_policy_the_reconcile_follows() {
        assert!(may_need_cancel(&ra(None, None)));
        assert!(!may_need_cancel(&ra(Some(DeletionPolicy::Orphan), None)));
        assert!(!may_need_cancel(&ra(None, Some(" Orphan "))));
        // The spec wins over the annotation: this resource cancels, so its Secret stays pinned.
        assert!(may_need_cancel(&ra(Some(DeletionPolicy::Cancel), Some("Orphan"))));
        assert!(may_need_cancel(&ra(None, Some("bogus"))));
    }
}
