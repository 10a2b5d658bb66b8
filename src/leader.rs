//! Leader election on a `coordination.k8s.io` Lease, with a fence that stops the leader's cloud
//! calls as soon as its leadership can no longer be proven.
//!
//! The algorithm is client-go's: a candidate takes the Lease when its holder has not renewed it
//! for a lease duration (measured on the candidate's own clock, from when it last saw the record
//! change), and the leader renews it every retry period. Writes are compare-and-swap on the
//! Lease's resourceVersion.
//!
//! What client-go leaves to the caller, and this module does: the **fence**. A leader whose last
//! successful renewal (counted from when the request was *sent*) is older than the renew
//! deadline stops starting cloud calls at once ([`Fence::may_act`]), whether or not its renew
//! loop noticed, and the calls it has in flight are cut at the same moment
//! ([`Fence::remaining`]). A standby cannot take over before a whole lease duration has passed
//! since that renewal, so nothing this instance sends lands after another leader may act, up to
//! `lease duration - renew deadline` of network and cloud latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{debug, info, warn};

/// Timing of the election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease is valid after its last renewal: a standby takes over after this.
    pub lease_duration: Duration,
    /// The leader stops acting when it has not renewed for this long (less than the lease
    /// duration; the difference is the margin for calls in flight).
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries.
    pub retry_period: Duration,
}

impl Timing {
    /// The timing for a lease duration and the time before expiry at which the leader must have
    /// renewed: renew deadline `lease - renew_before`, retry every `renew_before / 2` (at most
    /// 2 s, as client-go's default).
    pub fn new(lease_duration: Duration, renew_before: Duration) -> Timing {
        let renew_before = renew_before
            .min(lease_duration / 2)
            .max(Duration::from_millis(200));
        Timing {
            lease_duration,
            renew_deadline: lease_duration - renew_before,
            retry_period: (renew_before / 2).clamp(Duration::from_millis(100), Duration::from_secs(2)),
        }
    }
}

/// Whether this instance may act now. Cheap to clone; shared with every cloud call.
#[derive(Clone, Debug)]
pub struct Fence {
    inner: Arc<FenceState>,
}

#[derive(Debug)]
struct FenceState {
    /// Without leader election the fence is always open.
    elected: bool,
    leading: AtomicBool,
    /// The end of the current proof of leadership: last renewal sent + renew deadline.
    valid_until: Mutex<Option<Instant>>,
}

impl Fence {
    /// A fence that is always open (leader election off: this instance is the only one).
    pub fn always_open() -> Fence {
        Fence {
            inner: Arc::new(FenceState {
                elected: false,
                leading: AtomicBool::new(true),
                valid_until: Mutex::new(None),
            }),
        }
    }

    /// A fence that opens only while the election says this instance leads.
    pub fn elected() -> Fence {
        Fence {
            inner: Arc::new(FenceState {
                elected: true,
                leading: AtomicBool::new(false),
                valid_until: Mutex::new(None),
            }),
        }
    }

    /// Whether cloud calls may start now.
    pub fn may_act(&self) -> bool {
        self.remaining().is_none_or(|r| !r.is_zero())
    }

    /// How long this instance may still act: None when there is no limit (no election), zero
    /// when it must not act.
    pub fn remaining(&self) -> Option<Duration> {
        if !self.inner.elected {
            return None;
        }
        if !self.inner.leading.load(Ordering::Acquire) {
            return Some(Duration::ZERO);
        }
        let until = *self.inner.valid_until.lock().expect("fence");
        Some(until.map_or(Duration::ZERO, |u| u.saturating_duration_since(Instant::now())))
    }

    fn renewed(&self, sent_at: Instant, renew_deadline: Duration) {
        *self.inner.valid_until.lock().expect("fence") = Some(sent_at + renew_deadline);
        self.inner.leading.store(true, Ordering::Release);
    }

    fn close(&self) {
        self.inner.leading.store(false, Ordering::Release);
        *self.inner.valid_until.lock().expect("fence") = None;
    }
}

/// The holder and renew time of a Lease, as last seen, and when it was seen to change.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

/// An elector for one Lease and one identity.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    fence: Fence,
    observed: Option<Observed>,
}

/// Why leading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Lost {
    /// Another instance holds the Lease now.
    TakenOver(String),
    /// No renewal succeeded within the renew deadline (the API server is unreachable or slow).
    RenewDeadline,
}

impl Elector {
    /// An elector for Lease `name` in the namespace of `api`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing, fence: Fence) -> Elector {
        Elector {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
            fence,
            observed: None,
        }
    }

    /// Waits until this instance holds the Lease.
    pub async fn acquire(&mut self) {
        let mut last_error = String::new();
        loop {
            let sent_at = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.fence.renewed(sent_at, self.timing.renew_deadline);
                    return;
                }
                Ok(false) => {}
                // Said once per distinct error (a standby retries every retry period).
                Err(e) if e.to_string() != last_error => {
                    last_error = e.to_string();
                    warn!(error = %e, "trying the leader Lease failed");
                }
                Err(e) => debug!(error = %e, "trying the leader Lease failed"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews while leading; returns when leadership is lost. The fence closes by itself at the
    /// renew deadline even if this loop is stuck.
    pub async fn renew_until_lost(&mut self) -> Lost {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let sent_at = Instant::now();
            let budget = self
                .timing
                .renew_deadline
                .saturating_sub(sent_at.duration_since(last_renewal));
            match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    self.fence.renewed(sent_at, self.timing.renew_deadline);
                    last_renewal = sent_at;
                }
                Ok(Ok(false)) => {
                    self.fence.close();
                    let holder = self
                        .observed
                        .as_ref()
                        .and_then(|o| o.holder.clone())
                        .unwrap_or_default();
                    return Lost::TakenOver(holder);
                }
                Ok(Err(e)) => warn!(error = %e, "renewing the leader Lease failed"),
                Err(_) => warn!("renewing the leader Lease timed out"),
            }
            if Instant::now().duration_since(last_renewal) >= self.timing.renew_deadline {
                self.fence.close();
                return Lost::RenewDeadline;
            }
        }
    }

    /// Gives the Lease up (on shutdown), so that a standby takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        self.fence.close();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        info!("leader Lease released");
        Ok(())
    }

    /// One attempt: take the Lease if it is free or expired, renew it if held. Ok(false) when
    /// another instance holds it (or won a race for it).
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let duration_seconds = i32::try_from(self.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let seen = Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            at: Instant::now(),
        };
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != seen.holder || o.renew_time != seen.renew_time);
        if changed {
            self.observed = Some(seen);
        }
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if let Some(other) = holder.as_deref().filter(|_| !ours) {
            // Its validity as the holder wrote it, counted on this instance's clock from when
            // the record was seen to change (clocks of different machines are not compared).
            let valid = spec
                .lease_duration_seconds
                .map_or(self.timing.lease_duration, |s| {
                    Duration::from_secs(s.max(0) as u64)
                });
            let seen_at = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
            if seen_at.elapsed() < valid {
                debug!(holder = other, "the leader Lease is held");
                return Ok(false);
            }
            info!(previous = other, "the leader Lease expired: taking it");
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_seconds);
        spec.renew_time = Some(now);
        // The resourceVersion read above makes this a compare-and-swap.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_keeps_a_margin_for_calls_in_flight() {
        let t = Timing::new(Duration::from_secs(15), Duration::from_secs(5));
        assert_eq!(
            (t.renew_deadline, t.retry_period),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
        let t = Timing::new(Duration::from_secs(4), Duration::from_secs(1));
        assert_eq!(
            (t.renew_deadline, t.retry_period),
            (Duration::from_secs(3), Duration::from_millis(500))
        );
        let t = Timing::new(Duration::from_secs(2), Duration::from_secs(10));
        assert!(t.renew_deadline < t.lease_duration);
    }

    #[test]
    fn the_fence_closes_at_the_renew_deadline_by_itself() {
        assert!(Fence::always_open().may_act());
        assert_eq!(Fence::always_open().remaining(), None);
        let fence = Fence::elected();
        assert!(!fence.may_act(), "not before the election");
        fence.renewed(Instant::now(), Duration::from_secs(60));
        assert!(fence.may_act());
        fence.renewed(Instant::now() - Duration::from_secs(2), Duration::from_secs(1));
        assert!(
            !fence.may_act(),
            "a renewal older than the deadline proves nothing"
        );
        fence.renewed(Instant::now(), Duration::from_secs(60));
        fence.close();
        assert!(!fence.may_act());
    }
}
