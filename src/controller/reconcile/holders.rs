//! One desktop, one holder: a desktop (its endpoint's host, project and desktop ID) is held by
//! one RemoteAssistance at a time. A later one for the same desktop waits (`DesktopInUse`)
//! and makes no call that could end the holder's session; when the holder lets go, the next
//! one may take over.
//!
//! Who holds a desktop comes from the cache: a resource whose `status.session` names it and
//! whose session is not reported closed. Between a resource's first call and the status write
//! that records its session, this process's claim ([`Claims`]) stands in for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::resource::{Phase, RemoteAssistance};

/// A desktop as the cloud knows it: the endpoint's host (and port), the project, the desktop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DesktopKey {
    host: String,
    project_id: String,
    desktop_id: String,
}

impl DesktopKey {
    /// The desktop at `endpoint` (a URL), or None when it is not one.
    pub fn new(endpoint: &str, project_id: &str, desktop_id: &str) -> Option<DesktopKey> {
        let url = url::Url::parse(endpoint).ok()?;
        let host = match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{}:{p}", h.to_ascii_lowercase()),
            (Some(h), None) => h.to_ascii_lowercase(),
            (None, _) => return None,
        };
        Some(DesktopKey {
            host,
            project_id: project_id.to_string(),
            desktop_id: desktop_id.to_string(),
        })
    }

    /// The desktop the resource's spec names (where a new session would be opened).
    pub fn of_spec(ra: &RemoteAssistance) -> Option<DesktopKey> {
        let endpoint =
            crate::workspace::resolve_endpoint(ra.spec.region.as_deref(), ra.spec.endpoint.as_deref())
                .ok()?;
        DesktopKey::new(endpoint.as_str(), &ra.spec.project_id, &ra.spec.desktop_id)
    }

    /// The desktop whose session the resource holds, from its status.
    pub fn of_held(ra: &RemoteAssistance) -> Option<DesktopKey> {
        let status = ra.status.as_ref()?;
        if matches!(status.phase, Some(Phase::Closed)) {
            // Reported closed: the desktop is free for another holder (this resource confirms
            // with a Show before it lets go, and never cancels another's session).
            return None;
        }
        let b = status.session.as_ref()?;
        DesktopKey::new(&b.endpoint, &b.project_id, &b.desktop_id)
    }
}

/// Another resource that holds a desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Holder {
    /// How a waiting resource in `namespace` may be told about the holder: by name only in the
    /// same namespace (another namespace's objects are never revealed).
    pub fn describe_to(&self, namespace: &str) -> String {
        if self.namespace == namespace {
            format!(
                "the RemoteAssistance {} holds a session on this desktop",
                self.name
            )
        } else {
            "a RemoteAssistance in another namespace holds a session on this desktop".to_string()
        }
    }
}

/// How long a resource that let go of its desktop is remembered as not holding it: the cache
/// may show its older status (still holding) for a moment after.
const RELEASED_MEMORY: Duration = Duration::from_secs(600);

/// This process's claims on desktops not yet recorded in a status (desktop → UID), the
/// resources that let go of theirs, and the resources waiting for a desktop.
#[derive(Debug, Default)]
pub struct Claims {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_desktop: HashMap<DesktopKey, String>,
    released: HashMap<String, Instant>,
    waiting: HashMap<DesktopKey, Vec<ObjectRef<RemoteAssistance>>>,
}

impl Claims {
    /// Another resource that holds `key` (in the cache, or by a claim of a resource still in
    /// the cache), if any.
    pub fn holder(
        &self,
        key: &DesktopKey,
        ra: &RemoteAssistance,
        store: Option<&Store<RemoteAssistance>>,
    ) -> Option<Holder> {
        let inner = self.inner.lock().expect("claims");
        inner.holder(key, ra, store)
    }

    /// Claims `key` for `ra` unless another resource holds it; returns that holder if so.
    pub fn claim(
        &self,
        key: &DesktopKey,
        ra: &RemoteAssistance,
        store: Option<&Store<RemoteAssistance>>,
    ) -> Result<(), Holder> {
        let mut inner = self.inner.lock().expect("claims");
        if let Some(holder) = inner.holder(key, ra, store) {
            return Err(holder);
        }
        inner.by_desktop.insert(key.clone(), ra.uid().unwrap_or_default());
        Ok(())
    }

    /// Records that `waiter` waits for `key`: it is woken when the holder lets go.
    pub fn wait_for(&self, key: DesktopKey, waiter: ObjectRef<RemoteAssistance>) {
        let mut inner = self.inner.lock().expect("claims");
        let waiters = inner.waiting.entry(key).or_default();
        if !waiters.contains(&waiter) {
            waiters.push(waiter);
        }
    }

    /// `uid`'s session on `key` is over (or it held none): its claim goes, it no longer counts
    /// as the holder whatever the cache shows, and the resources waiting for the desktop are
    /// returned, to be woken.
    pub fn let_go(&self, uid: &str, key: Option<&DesktopKey>) -> Vec<ObjectRef<RemoteAssistance>> {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("claims");
        inner.by_desktop.retain(|_, c| c != uid);
        inner
            .released
            .retain(|_, at| now.duration_since(*at) < RELEASED_MEMORY);
        inner.released.insert(uid.to_string(), now);
        key.and_then(|k| inner.waiting.remove(k)).unwrap_or_default()
    }

    /// Keeps the claims and waiters of the UIDs `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut inner = self.inner.lock().expect("claims");
        inner.by_desktop.retain(|_, c| keep(c));
        for waiters in inner.waiting.values_mut() {
            waiters.retain(|w| w.extra.uid.as_deref().is_none_or(&keep));
        }
        inner.waiting.retain(|_, w| !w.is_empty());
    }
}

impl Inner {
    fn holder(
        &self,
        key: &DesktopKey,
        ra: &RemoteAssistance,
        store: Option<&Store<RemoteAssistance>>,
    ) -> Option<Holder> {
        let uid = ra.uid().unwrap_or_default();
        // Only the resources for the same desktop ID (immutable) are looked at closer: a cheap
        // filter under the store's lock, so a claim costs little with many resources.
        let others = store
            .map(|s| s.state_filter(|o| o.spec.desktop_id == key.desktop_id))
            .unwrap_or_default();
        let live = |o: &&std::sync::Arc<RemoteAssistance>| {
            let other = o.uid().unwrap_or_default();
            other != uid && !self.released.contains_key(&other)
        };
        let describe = |o: &RemoteAssistance| Holder {
            namespace: o.namespace().unwrap_or_default(),
            name: o.name_any(),
        };
        if let Some(other) = others
            .iter()
            .filter(live)
            .find(|o| DesktopKey::of_held(o).as_ref() == Some(key))
        {
            return Some(describe(other));
        }
        let claimant = self.by_desktop.get(key).filter(|c| **c != uid)?;
        others
            .iter()
            .filter(live)
            .find(|o| o.uid().as_deref() == Some(claimant.as_str()) && !finished(o))
            .map(|o| describe(o))
    }
}

/// Whether a resource's claim has lapsed: it finished or is being deleted without a session.
fn finished(ra: &RemoteAssistance) -> bool {
    matches!(
        ra.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Cancelled | Phase::Closed)
    )
}

impl crate::controller::context::PerObjectStore for Claims {
    fn forget(&self, uid: &str) {
        Claims::retain(self, |other| other != uid);
    }
    fn retain(&self, exists: &dyn Fn(&str) -> bool) {
        Claims::retain(self, exists);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{RemoteAssistanceStatus, SessionBinding};

    fn held(name: &str, uid: &str, endpoint: &str, phase: Phase) -> RemoteAssistance {
        let mut ra = crate::resource::sample(name);
        ra.metadata.uid = Some(uid.into());
        ra.metadata.namespace = Some("ns".into());
        ra.status = Some(RemoteAssistanceStatus {
            phase: Some(phase),
            session: Some(SessionBinding {
                endpoint: endpoint.into(),
                project_id: "p".into(),
                desktop_id: "d".into(),
                ..SessionBinding::default()
            }),
            ..RemoteAssistanceStatus::default()
        });
        ra
    }

    #[test]
    fn keys_compare_hosts_not_spellings() {
        assert_eq!(
            DesktopKey::new("https://Workspace.example.com/", "p", "d"),
            DesktopKey::new("https://workspace.example.com:443", "p", "d")
        );
        assert_ne!(
            DesktopKey::new("https://a.example.com", "p", "d"),
            DesktopKey::new("https://b.example.com", "p", "d")
        );
        assert_ne!(
            DesktopKey::new("https://a.example.com", "p", "d"),
            DesktopKey::new("https://a.example.com", "p", "e")
        );
    }

    #[test]
    fn a_desktop_has_one_holder() {
        let (store, mut writer) = kube::runtime::reflector::store();
        let holder = held(
            "first",
            "u1",
            "https://workspace.cn-north-4.myhuaweicloud.com",
            Phase::Active,
        );
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(holder));
        let claims = Claims::default();
        let mut second = crate::resource::sample("second");
        second.metadata.uid = Some("u2".into());
        second.metadata.namespace = Some("ns".into());
        let key = DesktopKey::of_spec(&second).unwrap();
        let refused = claims.claim(&key, &second, Some(&store)).unwrap_err();
        assert_eq!(
            refused.describe_to("ns"),
            "the RemoteAssistance first holds a session on this desktop"
        );
        assert_eq!(
            refused.describe_to("other"),
            "a RemoteAssistance in another namespace holds a session on this desktop"
        );

        // Reported closed: free for the next one; two new ones race: the first claim wins.
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(held(
            "first",
            "u1",
            "https://workspace.cn-north-4.myhuaweicloud.com",
            Phase::Closed,
        )));
        assert!(claims.claim(&key, &second, Some(&store)).is_ok());
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(second.clone()));
        let mut third = crate::resource::sample("third");
        third.metadata.uid = Some("u3".into());
        assert_eq!(
            claims.claim(&key, &third, Some(&store)).unwrap_err().name,
            "second"
        );
        claims.wait_for(key.clone(), ObjectRef::from_obj(&third));
        let woken = claims.let_go("u2", Some(&key));
        assert_eq!(woken, vec![ObjectRef::from_obj(&third)], "the waiter is woken");
        assert!(
            claims.claim(&key, &third, Some(&store)).is_ok(),
            "the cache still shows second; it let go all the same"
        );
    }
}
