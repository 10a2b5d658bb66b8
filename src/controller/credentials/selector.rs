//! Equality-based label selectors (`key=value`, `key!=value`, `key`, `!key`, comma-separated:
//! all must hold), as `kubectl get -l` takes them. Used for the namespaces that may use the
//! operator's default credentials.

use std::collections::BTreeMap;
use std::fmt;

/// One requirement on a label.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A label selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses `key=value,key!=value,key,!key` (`==` is `=`).
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let valid =
            |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &requirement {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::Absent(k) => k,
            };
            if !valid(key) {
                return Err(format!("{part:?} in label selector {text:?}: not a label key"));
            }
            requirements.push(requirement);
        }
        if requirements.is_empty() {
            return Err(format!("label selector {text:?} has no requirement"));
        }
        Ok(LabelSelector {
            text: text.to_string(),
            requirements,
        })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_requirement_must_hold() {
        let s = LabelSelector::parse(
            "team=helpdesk, workspace.assist.dev/default-credentials, env!=prod, !frozen",
        )
        .unwrap();
        assert!(s.matches(&labels(&[
            ("team", "helpdesk"),
            ("workspace.assist.dev/default-credentials", ""),
            ("env", "dev")
        ])));
        assert!(!s.matches(&labels(&[("team", "helpdesk")])), "a missing label");
        assert!(!s.matches(&labels(&[
            ("team", "helpdesk"),
            ("workspace.assist.dev/default-credentials", ""),
            ("env", "prod")
        ])));
        assert!(!s.matches(&labels(&[
            ("team", "helpdesk"),
            ("workspace.assist.dev/default-credentials", ""),
            ("frozen", "1")
        ])));
        assert!(LabelSelector::parse("").is_err() && LabelSelector::parse("a b=c").is_err());
        assert!(
            LabelSelector::parse("k==v")
                .unwrap()
                .matches(&labels(&[("k", "v")]))
        );
    }
}
