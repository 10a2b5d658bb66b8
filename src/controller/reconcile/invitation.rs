//! The invitation Secret: the secret parts of an open session (invitation code, share space
//! password, share links), in a Secret owned by the resource, written when they change and
//! deleted when the session ends or the resource goes.
//!
//! Invariant (speed only): [`Invitations`] remembers what this process last wrote for each
//! resource, so an unchanged session is not written again; the entry goes with the Secret.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use tracing::{debug, warn};

use crate::resource::RemoteAssistance;
use crate::workspace::ShowResponse;

use crate::controller::Context;
use crate::controller::error::{Error, Result};
use crate::controller::report::status::MANAGER;

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

/// What this process last wrote to each resource's invitation Secret (a fingerprint) and the
/// Secret's UID, by the resource's UID.
#[derive(Debug, Default)]
pub struct Invitations {
    written: Mutex<HashMap<String, (u64, Option<String>)>>,
}

impl Invitations {
    fn unchanged(&self, uid: &str, print: u64) -> bool {
        self.written
            .lock()
            .expect("invitations")
            .get(uid)
            .map(|(p, _)| *p)
            == Some(print)
    }

    fn wrote(&self, uid: String, print: u64, secret_uid: Option<String>) {
        self.written
            .lock()
            .expect("invitations")
            .insert(uid, (print, secret_uid));
    }

    /// The UID of the Secret this process last wrote for the resource.
    fn secret_uid(&self, uid: &str) -> Option<String> {
        self.written
            .lock()
            .expect("invitations")
            .get(uid)
            .and_then(|(_, s)| s.clone())
    }

    /// Forgets a resource (its Secret is gone, or the resource is).
    pub fn forget(&self, uid: &str) {
        self.written.lock().expect("invitations").remove(uid);
    }

    /// Keeps only the resources for which `exists` holds.
    pub fn retain(&self, exists: impl Fn(&str) -> bool) {
        self.written
            .lock()
            .expect("invitations")
            .retain(|uid, _| exists(uid));
    }
}

/// Whether the resource with UID `owner_uid` controls the Secret.
fn controlled_by(secret: &Secret, owner_uid: &str) -> bool {
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == owner_uid)
}

/// Writes the invitation Secret (owned by the resource) when its content changed since this
/// process last wrote it; `fresh`: the session was just created, so the Secret is new.
/// Returns its name.
pub(crate) async fn apply_secret(
    ctx: &Context,
    ra: &RemoteAssistance,
    show: &ShowResponse,
    fresh: bool,
) -> Result<String> {
    let name = invitation_secret_name(&ra.name_any());
    let namespace = ra.namespace().unwrap_or_default();
    let failed = |verb, e| {
        Error::kubernetes(
            verb,
            "Secret",
            format!("{namespace}/{name} (the session's invitation)"),
            e,
        )
    };
    let data = invitation_data(show);
    let uid = ra.uid().unwrap_or_default();
    let print = fingerprint(&data);
    if ctx.invitations.unchanged(&uid, print) {
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
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ra.namespace().unwrap_or_default());
    // A new session's Secret is created (cheaper for the API server than an apply); one that
    // is there already (restart, adoption, a change) is applied.
    let mut written = None;
    if fresh {
        let params = PostParams {
            field_manager: Some(MANAGER.into()),
            ..PostParams::default()
        };
        match api
            .create(
                &params,
                &serde_json::from_value(secret.clone())
                    .map_err(|e| failed("create", kube::Error::SerdeError(e)))?,
            )
            .await
        {
            Ok(s) => written = Some(s),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(failed("create", e)),
        }
    }
    if written.is_none() {
        // A Secret of that name is taken over only when this resource controls it: never a
        // user's Secret, or a same-name predecessor's that its garbage collection has not
        // removed yet.
        if let Some(existing) = api.get_opt(&name).await.map_err(|e| failed("get", e))?
            && !controlled_by(&existing, &uid)
        {
            return Err(Error::InvitationSecretTaken(format!("{namespace}/{name}")));
        }
        written = Some(
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|e| failed("patch", e))?,
        );
    }
    ctx.invitations.wrote(uid, print, written.and_then(|s| s.uid()));
    debug!(secret = %name, "invitation Secret written");
    Ok(name)
}

/// Deletes the resource's invitation Secret, if any (the session is over or the resource is
/// going; owner references would do it too where a garbage collector runs).
pub(crate) async fn delete_secret(ctx: &Context, ra: &RemoteAssistance) -> Result<()> {
    match secret_deletion(ctx, ra) {
        Some(deletion) => deletion.await,
        None => Ok(()),
    }
}

/// Starts deleting the invitation Secret of a resource that is going, without waiting: its
/// owner reference is the guarantee (the garbage collector deletes it after the resource),
/// this only makes it go sooner. A failure is logged.
pub(crate) fn delete_secret_in_background(ctx: &Context, ra: &RemoteAssistance) {
    if let Some(deletion) = secret_deletion(ctx, ra) {
        let metrics = ctx.metrics.clone();
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
fn secret_deletion(
    ctx: &Context,
    ra: &RemoteAssistance,
) -> Option<impl Future<Output = Result<()>> + Send + 'static> {
    let name = ra
        .status
        .as_ref()
        .and_then(|s| s.invitation_secret_name.clone())?;
    let owner_uid = ra.uid().unwrap_or_default();
    let known = ctx.invitations.secret_uid(&owner_uid);
    ctx.invitations.forget(&owner_uid);
    let namespace = ra.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = format!("{namespace}/{name} (the session's invitation)");
    let failed = move |verb, e| Error::kubernetes(verb, "Secret", object.clone(), e);
    Some(async move {
        // Deleted only as the Secret this resource controls (a UID precondition): a late
        // deletion never removes a same-name successor's Secret.
        let secret_uid = match known {
            Some(uid) => uid,
            None => match api.get_opt(&name).await.map_err(|e| failed("get", e))? {
                Some(s) if controlled_by(&s, &owner_uid) => s.uid().unwrap_or_default(),
                _ => return Ok(()),
            },
        };
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(secret_uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(failed("delete", e)),
        }
    })
}

impl crate::controller::context::PerObjectStore for Invitations {
    fn forget(&self, uid: &str) {
        Invitations::forget(self, uid);
    }
    fn retain(&self, exists: &dyn Fn(&str) -> bool) {
        Invitations::retain(self, exists);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_written_is_remembered_until_the_resource_is_forgotten() {
        let invitations = Invitations::default();
        invitations.wrote("u".into(), 7, None);
        assert!(invitations.unchanged("u", 7) && !invitations.unchanged("u", 8));
        invitations.forget("u");
        assert!(!invitations.unchanged("u", 7));
        invitations.wrote("gone".into(), 1, None);
        invitations.retain(|uid| uid != "gone");
        assert!(
            invitations.written.lock().unwrap().is_empty(),
            "nothing is left of a forgotten resource"
        );
    }

    #[test]
    fn invitation_names_fit() {
        assert_eq!(invitation_secret_name("ra"), "ra-invitation");
        let long = "a".repeat(253);
        let n = invitation_secret_name(&long);
        assert!(n.len() <= 253, "{}", n.len());
        assert_ne!(invitation_secret_name(&"b".repeat(253)), n);
    }
}
