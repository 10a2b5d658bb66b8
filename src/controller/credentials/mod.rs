//! Credentials and the trust boundaries around them: the credentials Secret read and cached, the
//! index of Secrets the watch reports, the pin that keeps a Secret until the cancels that need
//! it, the endpoints credentials may go to, the namespaces that may use the defaults, and the
//! agencies of other accounts the cluster admin bound to namespaces.

pub(crate) mod agencies;
pub(crate) mod cache;
pub(crate) mod endpoints;
pub(crate) mod index;
pub(crate) mod pins;
pub(crate) mod secret;
pub(crate) mod selector;
