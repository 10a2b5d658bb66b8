//! Time-boxed access, as pure decisions: when a held session must be cancelled (its maximum
//! duration), and when a finished object is deleted (its TTL). Everything derives from the
//! spec, the status and the cloud's times, never from memory: a restart or a new leader reaches
//! the same answers, and acts at once on deadlines that passed while no operator ran.

use std::time::Duration;

use jiff::Timestamp;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::resource::{AssistanceStatus, Phase, RemoteAssistance, parse_spec_duration};
use crate::workspace::STATUS_CLOSE;

/// The operator-wide limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// The maximum duration of resources that set none.
    pub default_max_duration: Option<Duration>,
    /// The most any resource may have: longer ones are capped.
    pub max_duration: Option<Duration>,
    /// The TTL after finishing of resources that set none.
    pub default_ttl_after_finished: Option<Duration>,
}

/// The maximum duration that applies to a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxDuration {
    /// The duration.
    pub duration: Duration,
    /// What was asked for, when the operator's maximum capped it.
    pub capped_from: Option<Duration>,
}

impl MaxDuration {
    /// The status note of a capped duration.
    pub fn capped_note(&self) -> Option<String> {
        self.capped_from.map(|asked| {
            format!(
                "{} asked for; capped to the operator's maximum {}",
                show(asked),
                show(self.duration)
            )
        })
    }
}

/// A duration as the spec writes them: `1h30m`, `45s`.
pub fn show(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The maximum duration of `ra`: its spec's, else the default; capped by the maximum. None
/// when there is none. Err when spec.maxDuration does not parse.
pub fn max_duration(ra: &RemoteAssistance, limits: &Limits) -> Result<Option<MaxDuration>, String> {
    let asked = match &ra.spec.max_duration {
        Some(text) => Some(parse_spec_duration(text).map_err(|e| format!("spec.maxDuration: {e}"))?),
        None => limits.default_max_duration,
    };
    Ok(match (asked, limits.max_duration) {
        (None, None) => None,
        (None, Some(max)) => Some(MaxDuration {
            duration: max,
            capped_from: None,
        }),
        (Some(asked), Some(max)) if asked > max => Some(MaxDuration {
            duration: max,
            capped_from: Some(asked),
        }),
        (Some(asked), _) => Some(MaxDuration {
            duration: asked,
            capped_from: None,
        }),
    })
}

/// Checks the spec's durations before any cloud call: Err names the field and why.
pub fn validate(ra: &RemoteAssistance) -> Result<(), String> {
    if let Some(text) = &ra.spec.max_duration {
        parse_spec_duration(text).map_err(|e| format!("spec.maxDuration: {e}"))?;
    }
    if let Some(text) = &ra.spec.ttl_after_finished {
        parse_spec_duration(text).map_err(|e| format!("spec.ttlAfterFinished: {e}"))?;
    }
    Ok(())
}

/// The maximum duration that is enforced whatever the spec says: the spec's (capped), or,
/// when spec.maxDuration does not parse, the operator's maximum alone (an invalid spec never
/// turns the admin's cap off; it is reported on the resource as well).
pub fn enforced_max_duration(ra: &RemoteAssistance, limits: &Limits) -> Option<MaxDuration> {
    max_duration(ra, limits).unwrap_or_else(|_| {
        limits.max_duration.map(|duration| MaxDuration {
            duration,
            capped_from: None,
        })
    })
}

/// When the session started: the earlier of its creation time as the cloud reports it (a UTC
/// time, with or without the `Z`) and when this operator first held it. A cloud clock ahead of
/// the operator's, or a time read in the wrong zone, can only shorten the session, never
/// extend it.
pub fn session_start(assistance: &AssistanceStatus, held_since: Option<&Time>) -> Option<Timestamp> {
    let reported = assistance.create_time.as_deref().and_then(|t| {
        let t = t.trim();
        t.parse::<Timestamp>().ok().or_else(|| {
            t.replace(' ', "T")
                .parse::<jiff::civil::DateTime>()
                .ok()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map(|z| z.timestamp())
        })
    });
    let held = held_since.or(assistance.held_since.as_ref()).map(|t| t.0);
    match (reported, held) {
        (Some(r), Some(h)) => Some(r.min(h)),
        (r, h) => r.or(h),
    }
}

/// Whether the resource holds an open session (the one a deadline would cancel). Whether a
/// session is in progress comes from its status and the record of holding it, never from the
/// share space ID, which every answer may leave out.
pub fn holds_session(ra: &RemoteAssistance) -> bool {
    let Some(status) = &ra.status else { return false };
    let held = status.records_a_session();
    !ra.spec.cancelled
        && ra.metadata.deletion_timestamp.is_none()
        && status.deadline_exceeded_at.is_none()
        && !matches!(status.phase, Some(Phase::Cancelled | Phase::Closed))
        && held
        && status
            .assistance
            .as_ref()
            .is_none_or(|a| a.status.as_deref() != Some(STATUS_CLOSE))
}

/// When the session `assistance` describes must end under `max`.
pub fn expires_at(
    assistance: &AssistanceStatus,
    held_since: Option<&Time>,
    max: &MaxDuration,
) -> Option<Timestamp> {
    let start = session_start(assistance, held_since)?;
    start
        .checked_add(jiff::SignedDuration::try_from(max.duration).ok()?)
        .ok()
}

/// When `ra`'s held session must end, if it holds one and has a maximum duration (the
/// enforced one: see [`enforced_max_duration`]).
pub fn deadline(ra: &RemoteAssistance, limits: &Limits) -> Option<Timestamp> {
    if !holds_session(ra) {
        return None;
    }
    held_deadline(ra, &enforced_max_duration(ra, limits)?)
}

/// When the operator's own maximum (`--max-duration`, the cluster admin's policy) ends `ra`'s
/// held session, whatever the resource says (paused, or an invalid spec).
pub fn admin_deadline(ra: &RemoteAssistance, limits: &Limits) -> Option<Timestamp> {
    if !holds_session(ra) {
        return None;
    }
    held_deadline(
        ra,
        &MaxDuration {
            duration: limits.max_duration?,
            capped_from: None,
        },
    )
}

fn held_deadline(ra: &RemoteAssistance, max: &MaxDuration) -> Option<Timestamp> {
    let status = ra.status.as_ref()?;
    let held_since = status.session.as_ref().and_then(|b| b.held_since.as_ref());
    let assistance = status.assistance.clone().unwrap_or_default();
    expires_at(&assistance, held_since, max)
}

/// Whether the object is finished: Cancelled (by its spec or its deadline) or Closed in the
/// cloud, and not being deleted.
pub fn finished(ra: &RemoteAssistance) -> bool {
    let Some(status) = &ra.status else { return false };
    ra.metadata.deletion_timestamp.is_none()
        && match status.phase {
            Some(Phase::Cancelled) => ra.spec.cancelled || status.deadline_exceeded_at.is_some(),
            Some(Phase::Closed) => true,
            _ => false,
        }
}

/// When a finished `ra` is to be deleted, if it has a TTL. Err when spec.ttlAfterFinished does
/// not parse.
pub fn delete_at(ra: &RemoteAssistance, limits: &Limits) -> Result<Option<Timestamp>, String> {
    if !finished(ra) {
        return Ok(None);
    }
    let ttl = match &ra.spec.ttl_after_finished {
        Some(text) => Some(parse_spec_duration(text).map_err(|e| format!("spec.ttlAfterFinished: {e}"))?),
        None => limits.default_ttl_after_finished,
    };
    let Some(ttl) = ttl else { return Ok(None) };
    let Some(finished_at) = ra
        .status
        .as_ref()
        .and_then(|s| s.finished_at.as_ref().or(s.cancelled_at.as_ref()))
    else {
        return Ok(None);
    };
    Ok(finished_at
        .0
        .checked_add(jiff::SignedDuration::try_from(ttl).map_err(|e| e.to_string())?)
        .ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{RemoteAssistanceStatus, SessionBinding};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn held(max: Option<&str>, create_time: Option<&str>) -> RemoteAssistance {
        let mut ra = crate::resource::sample("x");
        ra.spec.max_duration = max.map(str::to_string);
        ra.status = Some(RemoteAssistanceStatus {
            phase: Some(Phase::Active),
            assistance: Some(AssistanceStatus {
                share_space_id: Some("s".into()),
                status: Some("OPEN".into()),
                create_time: create_time.map(str::to_string),
                held_since: Some(Time(ts("2026-11-29T10:00:00Z"))),
                ..AssistanceStatus::default()
            }),
            ..RemoteAssistanceStatus::default()
        });
        ra
    }

    #[test]
    fn the_deadline_counts_from_the_clouds_time_else_from_holding() {
        let none = Limits::default();
        let ra = held(Some("30m"), Some("2026-11-29T09:00:00Z"));
        assert_eq!(deadline(&ra, &none), Some(ts("2026-11-29T09:30:00Z")));
        let ra = held(Some("1h30m"), Some("2026-11-29 09:00:00"));
        assert_eq!(
            deadline(&ra, &none),
            Some(ts("2026-11-29T10:30:00Z")),
            "a time without Z is UTC"
        );
        let ra = held(Some("2h"), None);
        assert_eq!(
            deadline(&ra, &none),
            Some(ts("2026-11-29T12:00:00Z")),
            "from when the operator held it"
        );
        assert_eq!(
            deadline(&held(None, None), &none),
            None,
            "no maximum: no deadline"
        );
    }

    #[test]
    fn the_session_starts_at_the_earlier_of_the_clouds_time_and_first_sight() {
        let none = Limits::default();
        // The cloud's clock is two hours ahead (or its zone-less time was read as UTC wrongly):
        // the deadline still counts from when the operator first saw the session.
        let ra = held(Some("30m"), Some("2026-11-29T12:00:00Z"));
        assert_eq!(deadline(&ra, &none), Some(ts("2026-11-29T10:30:00Z")));
        // No share space ID and no creation time in any answer: held all the same, from first sight.
        let mut ra = held(Some("30m"), None);
        let status = ra.status.as_mut().unwrap();
        status.assistance.as_mut().unwrap().share_space_id = None;
        status.assistance.as_mut().unwrap().held_since = None;
        status.session = Some(SessionBinding {
            held_since: Some(Time(ts("2026-11-29T08:00:00Z"))),
            ..SessionBinding::default()
        });
        assert!(holds_session(&ra));
        assert_eq!(deadline(&ra, &none), Some(ts("2026-11-29T08:30:00Z")));
    }

    #[test]
    fn an_unreadable_duration_is_reported_before_any_call() {
        let mut ra = held(Some("99999999999h"), None);
        assert!(validate(&ra).unwrap_err().starts_with("spec.maxDuration: "));
        ra.spec.max_duration = Some("2h".into());
        ra.spec.ttl_after_finished = Some("1d".into());
        assert!(validate(&ra).unwrap_err().starts_with("spec.ttlAfterFinished: "));
        ra.spec.ttl_after_finished = Some("876000h".into());
        assert_eq!(validate(&ra), Ok(()), "the CRD's bound is the parser's");
        ra.spec.ttl_after_finished = Some("876001h".into());
        assert!(validate(&ra).is_err());
    }

    #[test]
    fn an_invalid_spec_never_turns_the_admins_cap_off() {
        let limits = Limits {
            max_duration: Some(Duration::from_secs(3600)),
            ..Limits::default()
        };
        let ra = held(Some("99999999999h"), None);
        assert!(max_duration(&ra, &limits).is_err());
        assert_eq!(deadline(&ra, &limits), Some(ts("2026-11-29T11:00:00Z")));
        assert_eq!(
            admin_deadline(&held(Some("12h"), None), &limits),
            Some(ts("2026-11-29T11:00:00Z"))
        );
        assert_eq!(admin_deadline(&held(Some("12h"), None), &Limits::default()), None);
    }

    #[test]
    fn the_operators_maximum_caps_and_its_default_fills_in() {
        let limits = Limits {
            default_max_duration: Some(Duration::from_secs(3600)),
            max_duration: Some(Duration::from_secs(8 * 3600)),
            ..Limits::default()
        };
        let m = max_duration(&held(Some("12h"), None), &limits).unwrap().unwrap();
        assert_eq!(m.duration, Duration::from_secs(8 * 3600));
        assert_eq!(
            m.capped_note().unwrap(),
            "12h asked for; capped to the operator's maximum 8h"
        );
        assert_eq!(
            max_duration(&held(None, None), &limits)
                .unwrap()
                .unwrap()
                .duration,
            Duration::from_secs(3600)
        );
        assert_eq!(
            max_duration(&held(Some("2h"), None), &limits)
                .unwrap()
                .unwrap()
                .capped_from,
            None
        );
        let only_max = Limits {
            max_duration: Some(Duration::from_secs(60)),
            ..Limits::default()
        };
        assert_eq!(
            max_duration(&held(None, None), &only_max)
                .unwrap()
                .unwrap()
                .duration,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn only_a_held_session_has_a_deadline() {
        let limits = Limits::default();
        let mut ra = held(Some("1m"), None);
        ra.spec.cancelled = true;
        assert_eq!(deadline(&ra, &limits), None, "cancelling anyway");
        let mut ra = held(Some("1m"), None);
        ra.status.as_mut().unwrap().assistance.as_mut().unwrap().status = Some("CLOSE".into());
        assert_eq!(deadline(&ra, &limits), None, "closed in the cloud");
        let mut ra = held(Some("1m"), None);
        ra.status.as_mut().unwrap().deadline_exceeded_at = Some(Time(ts("2026-11-29T10:01:00Z")));
        assert_eq!(deadline(&ra, &limits), None, "already cancelled at its deadline");
    }

    #[test]
    fn a_finished_object_is_deleted_its_ttl_after_it_finished() {
        let limits = Limits {
            default_ttl_after_finished: Some(Duration::from_secs(600)),
            ..Limits::default()
        };
        let mut ra = held(None, None);
        assert_eq!(delete_at(&ra, &limits).unwrap(), None, "not finished");
        ra.spec.cancelled = true;
        let status = ra.status.as_mut().unwrap();
        status.phase = Some(Phase::Cancelled);
        status.finished_at = Some(Time(ts("2026-11-29T11:00:00Z")));
        assert_eq!(delete_at(&ra, &limits).unwrap(), Some(ts("2026-11-29T11:10:00Z")));
        ra.spec.ttl_after_finished = Some("1h".into());
        assert_eq!(
            delete_at(&ra, &limits).unwrap(),
            Some(ts("2026-11-29T12:00:00Z")),
            "a changed TTL counts from the same finish"
        );
        assert_eq!(
            delete_at(&ra, &Limits::default()).unwrap(),
            Some(ts("2026-11-29T12:00:00Z"))
        );
        ra.spec.ttl_after_finished = None;
        assert_eq!(delete_at(&ra, &Limits::default()).unwrap(), None, "no TTL: stays");
    }

    #[test]
    fn durations_read_and_print_as_the_spec_writes_them() {
        assert_eq!(parse_spec_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_spec_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "1", "h", "1d", "1.5h", "-1h", "99999999999999999999h"] {
            assert!(parse_spec_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(show(Duration::from_secs(5400)), "1h30m");
        assert_eq!(show(Duration::from_secs(8 * 3600)), "8h");
        assert_eq!(show(Duration::ZERO), "0s");
    }
}
