//! What the operator tells people: the status a reconcile concluded (written only when it
//! changed) and Kubernetes Events.

pub(crate) mod events;
pub(crate) mod status;
