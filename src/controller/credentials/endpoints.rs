//! Which endpoints the operator sends credentials to: the operator's decision, never the
//! resource's. A namespace that may create RemoteAssistances must not be able to point the
//! operator's credentials (or its own Secret's token, or a password login) at a server of its
//! choosing.
//!
//! Allowed by default: Huawei Cloud's official endpoints, `https://workspace.{region}.myhuaweicloud.com`
//! for Workspace and `https://iam.{region}.myhuaweicloud.com` / `https://iam.myhuaweicloud.com`
//! for IAM logins. Anything else (a private endpoint, a proxy, the simulator) must be allowed
//! with `--allowed-endpoint`: an exact `scheme://host[:port][/path]` (the path is a prefix), or
//! a host pattern where `*` stands for one DNS label (`https://workspace.*.example.internal`).
//! Plain `http://` is allowed only by an entry that says `http://`.

use std::fmt;

use url::Url;

/// One allowed endpoint, or family of endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRule {
    scheme: String,
    host_labels: Vec<String>,
    port: Option<u16>,
    path_prefix: String,
}

impl EndpointRule {
    /// Parses `scheme://host[:port][/path]`, `*` standing for one label of the host.
    pub fn parse(text: &str) -> Result<EndpointRule, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?}: an allowed endpoint starts with http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("{text:?}: the scheme must be http or https"));
        }
        // Parsed as a URL with the wildcard replaced, to reuse its host and port rules.
        let url = Url::parse(&format!("{scheme}://{}", rest.replace('*', "wildcard-label")))
            .map_err(|e| format!("{text:?}: {e}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{text:?}: no host"))?;
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(format!(
                "{text:?}: no query, fragment or user in an allowed endpoint"
            ));
        }
        let host_labels = host
            .split('.')
            .map(|l| {
                if l == "wildcard-label" {
                    "*".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        Ok(EndpointRule {
            scheme: scheme.into(),
            host_labels,
            port: url.port_or_known_default(),
            path_prefix: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// Whether `url` is this endpoint (or under its path).
    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else { return false };
        let labels: Vec<&str> = host.split('.').collect();
        let host_matches = labels.len() == self.host_labels.len()
            && labels
                .iter()
                .zip(&self.host_labels)
                .all(|(l, p)| (p == "*" && !l.is_empty()) || l.eq_ignore_ascii_case(p));
        let path = url.path().trim_end_matches('/');
        let path_matches = self.path_prefix.is_empty()
            || path == self.path_prefix
            || path.starts_with(&format!("{}/", self.path_prefix));
        url.scheme() == self.scheme
            && host_matches
            && url.port_or_known_default() == self.port
            && path_matches
    }
}

impl fmt::Display for EndpointRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host_labels.join("."))?;
        if let Some(p) = self
            .port
            .filter(|p| *p != if self.scheme == "https" { 443 } else { 80 })
        {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.path_prefix)
    }
}

/// Huawei Cloud's official Workspace and IAM endpoints.
pub fn official() -> Vec<EndpointRule> {
    [
        "https://workspace.*.myhuaweicloud.com",
        "https://iam.*.myhuaweicloud.com",
        "https://iam.myhuaweicloud.com",
    ]
    .iter()
    .map(|r| EndpointRule::parse(r).expect("a valid built-in rule"))
    .collect()
}

/// The endpoints the operator may call: the official ones and the admin's.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    /// Allowed besides the official endpoints (`--allowed-endpoint`).
    pub extra: Vec<EndpointRule>,
}

impl EndpointPolicy {
    /// Whether credentials may be sent to `url`.
    pub fn allows(&self, url: &Url) -> bool {
        official().iter().chain(&self.extra).any(|r| r.allows(url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn official_endpoints_only_by_default() {
        let policy = EndpointPolicy::default();
        assert!(policy.allows(&url("https://workspace.cn-north-4.myhuaweicloud.com")));
        assert!(policy.allows(&url("https://iam.myhuaweicloud.com/")));
        for refused in [
            "http://workspace.cn-north-4.myhuaweicloud.com",
            "https://workspace.cn-north-4.myhuaweicloud.com:8443",
            "https://workspace.a.b.myhuaweicloud.com",
            "https://workspace.cn-north-4.myhuaweicloud.com.evil.example",
            "https://evil.example/workspace.cn-north-4.myhuaweicloud.com",
            "http://127.0.0.1:8080",
        ] {
            assert!(!policy.allows(&url(refused)), "{refused}");
        }
    }

    #[test]
    fn admin_rules_are_exact_or_one_label_patterns() {
        let policy = EndpointPolicy {
            extra: vec![
                EndpointRule::parse("http://127.0.0.1:8080").unwrap(),
                EndpointRule::parse("https://*.ws.example.internal/api").unwrap(),
            ],
        };
        assert!(policy.allows(&url("http://127.0.0.1:8080")));
        assert!(!policy.allows(&url("http://127.0.0.1:8081")), "another port");
        assert!(!policy.allows(&url("https://127.0.0.1:8080")), "another scheme");
        assert!(policy.allows(&url("https://a.ws.example.internal/api/v")));
        assert!(
            !policy.allows(&url("https://a.ws.example.internal/apix")),
            "a path prefix is a whole segment"
        );
        assert!(
            !policy.allows(&url("https://a.b.ws.example.internal/api")),
            "one label per *"
        );
        assert!(EndpointRule::parse("ftp://x").is_err() && EndpointRule::parse("example.com").is_err());
        assert_eq!(
            EndpointRule::parse("https://*.ws.example.internal:443/api/")
                .unwrap()
                .to_string(),
            "https://*.ws.example.internal/api"
        );
    }
}
