//! What a change of a credentials Secret (as the metadata watch reports it) asks for: the
//! resources that use it, reconciled at once when its version changed. Only Secrets in the index
//! (read, or looked for, by a reconcile) are looked up among the resources; a pinned Secret being
//! deleted is handed to the task that releases pins.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::controller::context::Context;
use crate::resource::{RemoteAssistance, SECRET_FINALIZER};

/// The resources to reconcile when a Secret changed: those in its namespace that name it,
/// or that use it as the default credentials. Unchanged versions (re-lists) trigger nothing.
pub(crate) fn on_secret(
    ctx: &Context,
    secret: &PartialObjectMeta<Secret>,
    store: &Store<RemoteAssistance>,
) -> Vec<ObjectRef<RemoteAssistance>> {
    let (Some(ns), Some(name)) = (secret.namespace(), secret.metadata.name.clone()) else {
        return vec![];
    };
    if secret.metadata.deletion_timestamp.is_some()
        && secret.finalizers().iter().any(|f| f == SECRET_FINALIZER)
    {
        // A pinned Secret is being deleted: let it go as soon as no resource needs it (by the
        // task that releases pins, not here: a mapper only maps).
        ctx.release_pin_when_unused(ns.clone(), name.clone());
    }
    let key = (ns.clone(), name.clone());
    let is_default = ctx.config.default_credentials.as_ref() == Some(&key);
    if !is_default && !ctx.secret_index.contains(&key) {
        // No reconcile has read (or looked for) this Secret: no resource waits on it, and a
        // resource that names it later reads it then. The index first: most Secrets of a
        // cluster are not credentials, and looking for their users would scan every object.
        return vec![];
    }
    let users = store.state_filter(|ra| match &ra.spec.credentials_secret_ref {
        Some(r) => r.name == name && ra.namespace().as_deref() == Some(ns.as_str()),
        None => is_default,
    });
    if users.is_empty() && !is_default {
        // Not a credentials Secret in use: not indexed (the index stays as small as the
        // Secrets in use), and any credentials read from it are dropped.
        ctx.secret_index.forget(&key);
        ctx.credentials.put(key, None);
        return vec![];
    }
    let pinned = secret.finalizers().iter().any(|f| f == SECRET_FINALIZER);
    if !ctx
        .secret_index
        .observe(&key, &secret.resource_version().unwrap_or_default(), pinned)
    {
        return vec![];
    }
    users
        .into_iter()
        .map(|ra| {
            ctx.gates.secret_changed(&ra.uid().unwrap_or_default());
            ObjectRef::from_obj(&*ra)
        })
        .collect()
}
