//! The Secrets the operator writes or holds: the invitation Secret owned by each resource, and
//! the finalizer that pins a credentials Secret while a resource may still need it to cancel.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::resource::{DeletionPolicy, DELETION_POLICY_ANNOTATION, Phase, RemoteAssistance, SECRET_FINALIZER};
use crate::workspace::ShowResponse;

use super::Context;
use super::error::Error;
use super::status::MANAGER;

/// Label of invitation Secrets. The operator's Secret watch leaves them out: they never hold
/// credentials, and there is one per resource.
pub const INVITATION_LABEL: &str = "workspace.assist.dev/invitation";

/// Name of a resource's invitation Secret (`<name>-invitation`, shortened with a hash when the
/// name is long).
pub fn invitation_secret_name(resource_name: &str) -> String {
    let name = format!("{resource_name}-invitation");
    if name.len() <= 253 {
        return name;
    }
    let mut h = DefaultHasher::new();
    resource_name.hash(&mut h);
    format!("{}-{:08x}-invitation", &resource_name[..200], h.finish() as u32)
}

/// The secret parts of a session, as Secret data.
fn invitation_data(show: &ShowResponse) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    let mut put = |key: &str, value: &Option<crate::workspace::Sensitive>| {
        if let Some(v) = value {
            data.insert(key.to_string(), v.expose().to_string());
        }
    };
    put("invitationCode", &show.invitation_code);
    put("shareSpacePassword", &show.share_space_passwd);
    put("privateShareLink", &show.private_share_link);
    put("internetShareLink", &show.internet_share_link);
    data
}

fn fingerprint(data: &BTreeMap<String, String>) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

impl Context {
    /// Writes the invitation Secret (owned by the resource) when its content changed since this
    /// process last wrote it; `fresh`: the session was just created, so the Secret is new.
    /// Returns its name.
    pub async fn apply_invitation_secret(&self, ra: &RemoteAssistance, show: &ShowResponse, fresh: bool) -> Result<String, Error> {
        let name = invitation_secret_name(&ra.name_any());
        let namespace = ra.namespace().unwrap_or_default();
        let failed = |verb, e| Error::kubernetes(verb, "Secret", format!("{namespace}/{name} (the session's invitation)"), e);
        let data = invitation_data(show);
        let uid = ra.uid().unwrap_or_default();
        let print = fingerprint(&data);
        if self.invitations.lock().expect("invitations").get(&uid) == Some(&print) {
            return Ok(name);
        }
        let owner = OwnerReference {
            api_version: RemoteAssistance::api_version(&()).into_owned(),
            kind: RemoteAssistance::kind(&()).into_owned(),
            name: ra.name_any(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "labels": { "app.kubernetes.io/managed-by": "workspace-assist", INVITATION_LABEL: "true" },
                "ownerReferences": [owner],
            },
            "type": "Opaque",
            "stringData": data,
        });
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ra.namespace().unwrap_or_default());
        // A new session's Secret is created (cheaper for the API server than an apply); one that
        // is there already (restart, adoption, a change) is applied.
        let created = if fresh {
            let params = PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() };
            match api.create(&params, &serde_json::from_value(secret.clone()).map_err(kube::Error::SerdeError)?).await {
                Ok(_) => true,
                Err(kube::Error::Api(s)) if s.code == 409 => false,
                Err(e) => return Err(failed("create", e)),
            }
        } else {
            false
        };
        if !created {
            api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret)).await.map_err(|e| failed("patch", e))?;
        }
        self.invitations.lock().expect("invitations").insert(uid, print);
        debug!(secret = %name, "invitation Secret written");
        Ok(name)
    }

    /// Deletes the resource's invitation Secret, if any (the session is over or the resource is
    /// going; owner references would do it too where a garbage collector runs).
    pub async fn delete_invitation_secret(&self, ra: &RemoteAssistance) -> Result<(), Error> {
        match self.invitation_secret_deletion(ra) {
            Some(deletion) => deletion.await,
            None => Ok(()),
        }
    }

    /// Starts deleting the invitation Secret of a resource that is going, without waiting: its
    /// owner reference is the guarantee (the garbage collector deletes it after the resource),
    /// this only makes it go sooner. A failure is logged.
    pub fn delete_invitation_secret_in_background(&self, ra: &RemoteAssistance) {
        if let Some(deletion) = self.invitation_secret_deletion(ra) {
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = deletion.await {
                    if let Error::Kubernetes(f) = &e {
                        metrics.kubernetes_error(f.verb, f.kind, f.status());
                    }
                    warn!(error = %e, "could not delete the invitation Secret (its owner reference lets the garbage collector do it)");
                }
            });
        }
    }

    /// The deletion of the resource's invitation Secret, when it has one.
    fn invitation_secret_deletion(&self, ra: &RemoteAssistance) -> Option<impl Future<Output = Result<(), Error>> + Send + 'static> {
        let name = ra.status.as_ref().and_then(|s| s.invitation_secret_name.clone())?;
        self.invitations.lock().expect("invitations").remove(&ra.uid().unwrap_or_default());
        let namespace = ra.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        Some(async move {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(Error::kubernetes("delete", "Secret", format!("{namespace}/{name} (the session's invitation)"), e)),
            }
        })
    }

    /// Puts the pin finalizer on a credentials Secret that a resource may still need.
    pub async fn pin_secret(&self, secret: &Secret) -> Result<(), Error> {
        let what = format!("{}/{} (pin the credentials)", secret.namespace().unwrap_or_default(), secret.name_any());
        self.try_pin_secret(secret).await.map_err(|(verb, e)| Error::kubernetes(verb, "Secret", what, e))
    }

    async fn try_pin_secret(&self, secret: &Secret) -> Result<(), (&'static str, kube::Error)> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &secret.namespace().unwrap_or_default());
        let mut current = secret.clone();
        for _ in 0..5 {
            if current.finalizers().iter().any(|f| f == SECRET_FINALIZER) || current.metadata.deletion_timestamp.is_some() {
                return Ok(());
            }
            let mut finalizers = current.finalizers().to_vec();
            finalizers.push(SECRET_FINALIZER.to_string());
            // The resourceVersion makes this a compare-and-swap: other finalizers are kept.
            let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": current.resource_version() } });
            match api.patch(&current.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    info!(secret = %current.name_any(), "credentials Secret pinned until no RemoteAssistance needs it to cancel");
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&current.name_any()).await.map_err(|e| ("get", e))? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                },
                Err(e) => return Err(("patch", e)),
            }
        }
        Ok(())
    }

    /// Removes the pin from Secret `namespace/name` when no resource other than `except_uid`
    /// may still need it to cancel.
    pub async fn release_secret_if_unused(&self, namespace: &str, name: &str, except_uid: &str) -> Result<(), Error> {
        let failed = |verb, e| Error::kubernetes(verb, "Secret", format!("{namespace}/{name} (release the credentials pin)"), e);
        // The watch knows whether the Secret carries a pin at all: if not, there is nothing to
        // release and no need to look through every resource.
        if self.known_unpinned(namespace, name) {
            return Ok(());
        }
        // `find` stops at the first resource that needs it, without copying the cache.
        let still_needed = self.store().is_some_and(|store| {
            store
                .find(|ra| {
                    ra.uid().as_deref() != Some(except_uid)
                        && ra.namespace().as_deref() == Some(namespace)
                        && ra.spec.credentials_secret_ref.as_ref().is_some_and(|r| r.name == name)
                        && may_need_cancel(ra)
                        && !self.was_cancelled(&ra.uid().unwrap_or_default())
                })
                .is_some()
        });
        if still_needed {
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        for _ in 0..5 {
            let Some(secret) = api.get_opt(name).await.map_err(|e| failed("get", e))? else { return Ok(()) };
            if !secret.finalizers().iter().any(|f| f == SECRET_FINALIZER) {
                return Ok(());
            }
            let finalizers: Vec<&String> = secret.finalizers().iter().filter(|f| *f != SECRET_FINALIZER).collect();
            let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": secret.resource_version() } });
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
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
}

/// Whether a resource may still have to cancel with its credentials: not cancelled yet (a
/// `Closed` one still confirms with the cloud before it goes), and not marked Orphan on the
/// resource itself (the namespace and operator defaults are not consulted here: pinning too
/// long is safe, releasing too early is not).
pub fn may_need_cancel(ra: &RemoteAssistance) -> bool {
    let done = ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Cancelled);
    let orphan_on_resource = ra.spec.deletion_policy == Some(DeletionPolicy::Orphan)
        || ra.annotations().get(DELETION_POLICY_ANNOTATION).map(String::as_str) == Some("Orphan");
    !done && !orphan_on_resource && (ra.metadata.deletion_timestamp.is_none() || ra.finalizers().iter().any(|f| f == crate::resource::FINALIZER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invitation_names_fit() {
        assert_eq!(invitation_secret_name("ra"), "ra-invitation");
        let long = "a".repeat(253);
        let n = invitation_secret_name(&long);
        assert!(n.len() <= 253, "{}", n.len());
        assert_ne!(invitation_secret_name(&"b".repeat(253)), n);
    }
}
