//! Kubernetes Events (events.k8s.io/v1) about RemoteAssistances.
//!
//! A repeated Warning (same object, reason and action within [`SERIES_WINDOW`]) becomes a series
//! on the first Event, as kube's `Recorder` does. Unlike the `Recorder`, nothing is kept for
//! Normal Events (each marks a one-off step of one object), and a repeat is remembered by a few
//! small fields rather than a copy of the whole Event: holding 10,000 resources, the `Recorder`'s
//! cache of every Event of the last minutes held more memory than the resources themselves, and
//! scanned all of it on every publish.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::{Api, Client};
use serde_json::json;

/// How long a repeat of a Warning counts towards the first one's series (kube's `Recorder`
/// uses the same).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Most remembered Warnings between two sweeps of expired ones (the sweep is O(n); sweeping
/// when the table doubled keeps publishing O(1) on average).
const SWEEP_FLOOR: usize = 1024;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A step that went as expected.
    Normal,
    /// Something a person may need to look at.
    Warning,
}

/// What an Event says.
#[derive(Debug, Clone)]
pub struct Note<'a> {
    /// Normal or Warning.
    pub type_: EventType,
    /// Short CamelCase reason.
    pub reason: &'a str,
    /// Human-readable text (cut to 1 KiB, visibly).
    pub note: &'a str,
    /// What the controller was doing.
    pub action: &'a str,
}

/// A Warning already published, whose repeats count in its series.
#[derive(Debug)]
struct Published {
    name: String,
    count: i32,
    first: Instant,
}

/// Publishes Events in the name of one controller instance.
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    warnings: Mutex<Warnings>,
}

#[derive(Default)]
struct Warnings {
    /// By (object UID, reason, action).
    published: HashMap<(String, String, String), Published>,
    sweep_at: usize,
}

impl EventPublisher {
    /// A publisher reporting as `controller` / `instance`.
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        EventPublisher {
            client,
            controller: controller.into(),
            instance: instance.into(),
            warnings: Mutex::new(Warnings {
                published: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }

    /// Creates the Event, or counts a repeated Warning in the first one's series.
    pub async fn publish(&self, note: &Note<'_>, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Instant::now();
        if note.type_ == EventType::Warning {
            let key = (
                regarding.uid.clone().unwrap_or_default(),
                note.reason.to_string(),
                note.action.to_string(),
            );
            let repeat = self.warnings.lock().expect("warnings").repeat(&key, now);
            if let Some((name, count)) = repeat {
                let series = json!({ "series": EventSeries { count, last_observed_time: MicroTime(jiff::Timestamp::now()) } });
                // The first Event may be gone (expired, deleted): then this one starts anew.
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                    .await
                {
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    other => return other.map(|_| ()),
                }
            }
            let event = api
                .create(&PostParams::default(), &self.event(note, regarding, &namespace))
                .await?;
            let name = event.metadata.name.unwrap_or_default();
            self.warnings.lock().expect("warnings").remember(
                key,
                Published {
                    name,
                    count: 1,
                    first: now,
                },
                now,
            );
            return Ok(());
        }
        api.create(&PostParams::default(), &self.event(note, regarding, &namespace))
            .await
            .map(|_| ())
    }

    fn event(&self, note: &Note<'_>, regarding: &ObjectReference, namespace: &str) -> Event {
        let now = jiff::Timestamp::now();
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                // Unique per object and nanosecond, as kube's Recorder and client-go name them.
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(match note.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            reason: Some(note.reason.to_string()),
            action: Some(note.action.to_string()),
            // The API server refuses notes over 1 KiB (bytes).
            note: Some(crate::text::bounded(note.note, crate::text::MAX_MESSAGE_BYTES).into_owned()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

impl Warnings {
    /// The name and next count of the series this Warning repeats, if any.
    fn repeat(&mut self, key: &(String, String, String), now: Instant) -> Option<(String, i32)> {
        let published = self.published.get_mut(key)?;
        if now.duration_since(published.first) >= SERIES_WINDOW {
            self.published.remove(key);
            return None;
        }
        published.count += 1;
        Some((published.name.clone(), published.count))
    }

    fn remember(&mut self, key: (String, String, String), published: Published, now: Instant) {
        self.published.insert(key, published);
        if self.published.len() >= self.sweep_at {
            self.published
                .retain(|_, p| now.duration_since(p.first) < SERIES_WINDOW);
            self.sweep_at = (self.published.len() * 2).max(SWEEP_FLOOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str) -> (String, String, String) {
        (uid.into(), "CloudError".into(), "Cancel".into())
    }

    fn published(at: Instant) -> Published {
        Published {
            name: "ra.1".into(),
            count: 1,
            first: at,
        }
    }

    fn fresh() -> Warnings {
        Warnings {
            sweep_at: SWEEP_FLOOR,
            ..Warnings::default()
        }
    }

    #[test]
    fn a_repeat_within_the_window_counts_in_the_series() {
        let (mut w, start) = (fresh(), Instant::now());
        assert_eq!(w.repeat(&key("a"), start), None, "nothing published yet");
        w.remember(key("a"), published(start), start);
        assert_eq!(
            w.repeat(&key("a"), start + Duration::from_secs(1)),
            Some(("ra.1".into(), 2))
        );
        assert_eq!(
            w.repeat(&key("a"), start + Duration::from_secs(2)),
            Some(("ra.1".into(), 3))
        );
        assert_eq!(w.repeat(&key("b"), start), None, "another object");
        assert_eq!(
            w.repeat(&key("a"), start + SERIES_WINDOW),
            None,
            "past the window a new Event starts"
        );
        assert!(w.published.is_empty());
    }

    #[test]
    fn expired_warnings_are_swept_as_the_table_grows() {
        let (mut w, start) = (fresh(), Instant::now());
        for i in 0..SWEEP_FLOOR - 1 {
            w.remember(key(&i.to_string()), published(start), start);
        }
        let later = start + SERIES_WINDOW;
        w.remember(key("new"), published(later), later);
        assert_eq!(w.published.len(), 1, "only the live one is left");
        assert_eq!(w.sweep_at, SWEEP_FLOOR);
    }
}
