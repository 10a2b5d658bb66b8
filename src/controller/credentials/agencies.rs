//! Agencies of other accounts, as the cluster admin grants them with AgencyBindings: which
//! binding a resource uses (the rule in [`choose`]), and the binding's temporary credentials,
//! fetched once per binding and shared by every resource that uses it.
//!
//! Precedence (one place: `Step::prepare`): the resource's own credentials Secret, then a
//! binding, then the operator's default credentials. A held session keeps the binding it was
//! reached through (status.session.agencyBinding), whether or not the binding still selects the
//! namespace: removing a namespace from a selector stops new sessions, never a cancel.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use url::Url;

use crate::agency_binding::{AgencyBinding, session_user_name};
use crate::workspace::{
    AgencyRequest, AmbientCredentials, AmbientError, AmbientKind, Credentials, DelegatingAccount,
    GLOBAL_IAM_ENDPOINT, TemporaryCredentials, assume_agency,
};

/// Why a resource cannot use an AgencyBinding. Nothing is sent, IAM is not asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgencyBindingError {
    /// The operator does not watch AgencyBindings (`--agency-bindings` is off).
    #[error(
        "spec.agencyBinding names {0}, but this operator does not use AgencyBindings (its admin turns them on with --agency-bindings)"
    )]
    Disabled(String),
    /// The binding the resource names (or the one its session was reached through) does not
    /// exist.
    #[error("the AgencyBinding {0} does not exist")]
    NotFound(String),
    /// The binding the resource names does not select its namespace.
    #[error(
        "the AgencyBinding {binding} does not select namespace {namespace}: only the cluster admin can change that"
    )]
    NotAllowed {
        /// The binding.
        binding: String,
        /// The resource's namespace.
        namespace: String,
    },
    /// Several bindings select the namespace and the resource names none.
    #[error("AgencyBindings {0} all select this namespace: name one in spec.agencyBinding")]
    Ambiguous(String),
    /// The binding does not allow the resource's project.
    #[error("the AgencyBinding {binding} does not allow project {project} (spec.projectIds)")]
    ProjectNotAllowed {
        /// The binding.
        binding: String,
        /// The project.
        project: String,
    },
    /// The binding's namespace selector cannot be read.
    #[error("the AgencyBinding {binding} has a namespaceSelector the operator cannot read: {message}")]
    BadSelector {
        /// The binding.
        binding: String,
        /// Why.
        message: String,
    },
    /// The operator has no identity of its own to assume the agency with.
    #[error(
        "the AgencyBinding {0} needs the operator's own identity (--ambient-credentials or --default-credentials-secret), and it has none"
    )]
    NoOwnIdentity(String),
    /// The operator's default Secret holds a password login: IAM's agency API takes AK/SK or a
    /// token.
    #[error(
        "the AgencyBinding {0} needs the operator's own AK/SK or IAM token; its default Secret holds a password login"
    )]
    PasswordIdentity(String),
}

impl AgencyBindingError {
    /// A stable CamelCase reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AgencyBindingError::Disabled(_) | AgencyBindingError::NotFound(_) => "AgencyBindingNotFound",
            AgencyBindingError::NotAllowed { .. } => "AgencyBindingNotAllowed",
            AgencyBindingError::Ambiguous(_) => "AgencyBindingAmbiguous",
            AgencyBindingError::ProjectNotAllowed { .. } => "AgencyProjectNotAllowed",
            AgencyBindingError::BadSelector { .. } => "AgencyBindingInvalid",
            AgencyBindingError::NoOwnIdentity(_) | AgencyBindingError::PasswordIdentity(_) => {
                "AgencyIdentityMissing"
            }
        }
    }
}

/// Whether `binding` selects the namespace `namespace` with `labels`.
pub fn selects(
    binding: &AgencyBinding,
    labels: &BTreeMap<String, String>,
) -> Result<bool, AgencyBindingError> {
    let selector = Selector::try_from(binding.spec.namespace_selector.clone()).map_err(|e| {
        AgencyBindingError::BadSelector {
            binding: binding.name_any(),
            message: e.to_string(),
        }
    })?;
    Ok(selector.matches(labels))
}

/// The binding a new session of a resource in `namespace` (with `labels`) uses: the one it
/// names (`named`), which must select the namespace; else the one binding that selects it;
/// None when none does (the operator's default credentials come next).
pub fn choose(
    bindings: &[Arc<AgencyBinding>],
    named: Option<&str>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Option<Arc<AgencyBinding>>, AgencyBindingError> {
    if let Some(name) = named {
        let binding = bindings
            .iter()
            .find(|b| b.name_any() == name)
            .ok_or_else(|| AgencyBindingError::NotFound(name.to_string()))?;
        if !selects(binding, labels)? {
            return Err(AgencyBindingError::NotAllowed {
                binding: name.to_string(),
                namespace: namespace.to_string(),
            });
        }
        return Ok(Some(binding.clone()));
    }
    let mut selecting = Vec::new();
    for binding in bindings
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
    {
        // A binding whose selector cannot be read selects nobody it was not named by.
        if selects(binding, labels).unwrap_or(false) {
            selecting.push(binding.clone());
        }
    }
    match selecting.len() {
        0 => Ok(None),
        1 => Ok(selecting.pop()),
        _ => {
            let mut names: Vec<String> = selecting.iter().map(|b| b.name_any()).collect();
            names.sort();
            Err(AgencyBindingError::Ambiguous(names.join(", ")))
        }
    }
}

/// Whether `binding` allows `project`.
pub fn allows_project(binding: &AgencyBinding, project: &str) -> Result<(), AgencyBindingError> {
    let allowed = &binding.spec.project_ids;
    if allowed.is_empty() || allowed.iter().any(|p| p == project) {
        return Ok(());
    }
    Err(AgencyBindingError::ProjectNotAllowed {
        binding: binding.name_any(),
        project: project.to_string(),
    })
}

/// The request IAM gets for `binding`.
pub fn request_for(binding: &AgencyBinding, iam_endpoint: Option<&Url>) -> AgencyRequest {
    let spec = &binding.spec;
    let account = match (&spec.domain_id, &spec.domain_name) {
        (Some(id), _) => DelegatingAccount::Id(id.clone()),
        (None, name) => DelegatingAccount::Name(name.clone().unwrap_or_default()),
    };
    AgencyRequest {
        iam_endpoint: iam_endpoint
            .cloned()
            .unwrap_or_else(|| Url::parse(GLOBAL_IAM_ENDPOINT).expect("a URL")),
        account,
        agency_name: spec.agency_name.clone(),
        duration_seconds: spec.duration_seconds,
        session_user: session_user_name(&binding.name_any()),
    }
}

/// The outcome of a binding's last fetch, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFetch {
    /// When.
    pub at: jiff::Timestamp,
    /// None: it worked; else the failure's message (HTTP status and IAM's code, no secret).
    pub failure: Option<String>,
}

/// One binding's shared credentials, for the request they were fetched with (a changed spec
/// is a new request and new credentials).
struct Entry {
    request: AgencyRequest,
    credentials: AmbientCredentials,
}

/// The temporary credentials of every binding in use, and how their last fetch went.
#[derive(Default)]
pub struct Agencies {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    last_fetch: Mutex<HashMap<String, LastFetch>>,
}

impl Agencies {
    /// The binding's credentials: cached while fresh, else one fetch (shared by all callers,
    /// with the same backoff after failures as the operator's own identity) signed with the
    /// operator's own credentials from `caller`. When IAM refuses those with a 401, `caller` is
    /// asked once more with the refused access key (its temporary credentials may have expired)
    /// and the fetch made once more. `fetched` hears of every fetch (whether it worked).
    pub async fn credentials<C, Fut>(
        &self,
        http: &reqwest::Client,
        binding: &str,
        request: AgencyRequest,
        caller: C,
        fetched: impl FnOnce(bool),
    ) -> Result<Credentials, AmbientError>
    where
        C: Fn(Option<String>) -> Fut,
        Fut: Future<Output = Result<Credentials, AmbientError>>,
    {
        let entry = {
            let mut entries = self.entries.lock().expect("agencies");
            let current = entries.get(binding).filter(|e| e.request == request).cloned();
            current.unwrap_or_else(|| {
                let entry = Arc::new(Entry {
                    request: request.clone(),
                    credentials: AmbientCredentials::fetched_by_caller(AmbientKind::Agency),
                });
                entries.insert(binding.to_string(), entry.clone());
                entry
            })
        };
        let fetching = entry.clone();
        let fetch = move || async move {
            let result: Result<TemporaryCredentials, AmbientError> = async {
                let own = caller(None).await?;
                match assume_agency(http, &own, &fetching.request).await {
                    Err(e) if e.http_status == Some(401) => {
                        let Credentials::AkSk { access_key_id, .. } = &own else {
                            return Err(e);
                        };
                        let renewed = caller(Some(access_key_id.clone())).await?;
                        if renewed == own {
                            return Err(e);
                        }
                        assume_agency(http, &renewed, &fetching.request).await
                    }
                    other => other,
                }
            }
            .await;
            self.last_fetch.lock().expect("agencies").insert(
                binding.to_string(),
                LastFetch {
                    at: jiff::Timestamp::now(),
                    failure: result.as_ref().err().map(ToString::to_string),
                },
            );
            fetched(result.is_ok());
            if let Err(e) = &result {
                tracing::warn!(binding, error = %e, iam_message = e.source_message.as_deref().unwrap_or(""), "could not assume the agency");
            }
            result
        };
        entry.credentials.credentials_with(fetch).await
    }

    /// The cloud said the binding's credentials with `access_key_id` expired: the next call
    /// fetches new ones.
    pub fn expired(&self, binding: &str, access_key_id: &str) {
        if let Some(entry) = self.entries.lock().expect("agencies").get(binding) {
            entry.credentials.expired(access_key_id);
        }
    }

    /// How the binding's last fetch went, if one was made.
    pub fn last_fetch(&self, binding: &str) -> Option<LastFetch> {
        self.last_fetch.lock().expect("agencies").get(binding).cloned()
    }

    /// Forgets the credentials of bindings that are gone.
    pub fn retain(&self, exists: impl Fn(&str) -> bool) {
        self.entries.lock().expect("agencies").retain(|k, _| exists(k));
        self.last_fetch.lock().expect("agencies").retain(|k, _| exists(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency_binding::AgencyBindingSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn binding(name: &str, namespace: &str) -> Arc<AgencyBinding> {
        let selector = LabelSelector {
            match_labels: Some([("kubernetes.io/metadata.name".to_string(), namespace.to_string())].into()),
            ..LabelSelector::default()
        };
        Arc::new(AgencyBinding::new(
            name,
            AgencyBindingSpec {
                domain_id: Some("d".into()),
                domain_name: None,
                agency_name: "a".into(),
                duration_seconds: 900,
                namespace_selector: selector,
                project_ids: vec![],
            },
        ))
    }

    fn labels(namespace: &str) -> BTreeMap<String, String> {
        [("kubernetes.io/metadata.name".to_string(), namespace.to_string())].into()
    }

    #[test]
    fn a_resource_gets_the_binding_that_selects_it_or_the_one_it_names() {
        let bindings = vec![binding("b1", "ns1"), binding("b2", "ns2"), binding("b2x", "ns2")];
        let name = |r: Result<Option<Arc<AgencyBinding>>, _>| r.map(|b| b.map(|b| b.name_any()));
        assert_eq!(
            name(choose(&bindings, None, "ns1", &labels("ns1"))),
            Ok(Some("b1".into()))
        );
        assert_eq!(
            name(choose(&bindings, None, "ns3", &labels("ns3"))),
            Ok(None),
            "defaults next"
        );
        assert_eq!(
            name(choose(&bindings, None, "ns2", &labels("ns2"))),
            Err(AgencyBindingError::Ambiguous("b2, b2x".into()))
        );
        assert_eq!(
            name(choose(&bindings, Some("b2x"), "ns2", &labels("ns2"))),
            Ok(Some("b2x".into()))
        );
        assert_eq!(
            name(choose(&bindings, Some("b1"), "ns2", &labels("ns2"))),
            Err(AgencyBindingError::NotAllowed {
                binding: "b1".into(),
                namespace: "ns2".into()
            }),
            "naming a binding does not cross its selector"
        );
        assert_eq!(
            name(choose(&bindings, Some("nope"), "ns1", &labels("ns1"))),
            Err(AgencyBindingError::NotFound("nope".into()))
        );
    }

    #[test]
    fn projects_are_limited_when_listed() {
        let mut b = (*binding("b", "ns")).clone();
        assert!(allows_project(&b, "p1").is_ok());
        b.spec.project_ids = vec!["p1".into()];
        assert!(allows_project(&b, "p1").is_ok());
        assert_eq!(
            allows_project(&b, "p2").unwrap_err().reason(),
            "AgencyProjectNotAllowed"
        );
    }
}
