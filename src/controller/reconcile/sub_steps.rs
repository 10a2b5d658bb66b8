//! The sub-steps of a reconcile, named and in order: what an apply or a cleanup looks at before
//! it calls the cloud, and why in that order ([`APPLY_SUB_STEPS`], [`CLEANUP_SUB_STEPS`]).
//! Each sub-step either decides the reconcile or lets the next one look.

use super::*;

/// The sub-steps of an apply (the object exists and holds the finalizer), in order. The first
/// that decides ends the reconcile. The order is the policy:
///
/// 1. `Paused`: a person said stop; nothing is called, except that the cluster admin's
///    `--max-duration` still ends a held session (the admin's cap outranks the pause).
/// 2. `Deadline`: a held session past its deadline is cancelled before anything else may keep
///    it open; it comes before the spec check so that an unreadable `maxDuration` cannot turn
///    the operator's own maximum off.
/// 3. `InvalidSpec`: a spec that cannot be acted on is reported before any cloud call.
/// 4. `Ttl`: a finished object past its `ttlAfterFinished` is deleted.
/// 5. `FinishedAtDeadline`: once cancelled at its deadline, an object starts no new session.
/// 6. `CancelConfirmed`: spec.cancelled and the cancel confirmed: only the status to record.
/// 7. `Closed`: the cloud said the session ended: nothing to do until cancelled or deleted.
/// 8. `PollNotDue`: a held session is observed only when its poll is due (the operator's own
///    status writes trigger reconciles too).
/// 9. `BindingChanged`: where the held session lives changed: nothing goes to the new place.
/// 10. `DesktopInUse`: another resource holds the desktop: no call that could end its session.
///
/// When none decides: cancel (spec.cancelled), or start, adopt or observe the session.
const APPLY_SUB_STEPS: [ApplySubStep; 10] = [
    ApplySubStep::Paused,
    ApplySubStep::Deadline,
    ApplySubStep::InvalidSpec,
    ApplySubStep::Ttl,
    ApplySubStep::FinishedAtDeadline,
    ApplySubStep::CancelConfirmed,
    ApplySubStep::Closed,
    ApplySubStep::PollNotDue,
    ApplySubStep::BindingChanged,
    ApplySubStep::DesktopInUse,
];

/// The sub-steps of a cleanup (deletion was requested), in order; the first that decides ends
/// the reconcile:
///
/// 1. `Paused`: the finalizer stays, except past the cluster admin's `--max-duration`.
/// 2. `Orphan`: the deletion policy leaves the session alone (unless the operator refuses
///    Orphan for a time-boxed session, then it goes on to cancel).
/// 3. `CancelConfirmed`: the cancel was confirmed already: let go without a call.
/// 4. `DesktopHeldByAnother`: this resource never held a session and another holds the
///    desktop: a cancel would end the other's session, so let go without one.
///
/// When none decides: end the session by the release rule ([`release`]), then let go.
const CLEANUP_SUB_STEPS: [CleanupSubStep; 4] = [
    CleanupSubStep::Paused,
    CleanupSubStep::Orphan,
    CleanupSubStep::CancelConfirmed,
    CleanupSubStep::DesktopHeldByAnother,
];

/// A sub-step of an apply; see [`APPLY_SUB_STEPS`] for what each decides and why in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplySubStep {
    Paused,
    Deadline,
    InvalidSpec,
    Ttl,
    FinishedAtDeadline,
    CancelConfirmed,
    Closed,
    PollNotDue,
    BindingChanged,
    DesktopInUse,
}

/// A sub-step of a cleanup; see [`CLEANUP_SUB_STEPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CleanupSubStep {
    Paused,
    Orphan,
    CancelConfirmed,
    DesktopHeldByAnother,
}

/// What a sub-step says: look at the next one, or the reconcile ends with this outcome.
enum Flow {
    Next,
    Done(Result<Action>),
}

impl Flow {
    /// Ends the reconcile, waiting for a change, when `decided`.
    fn done_if(decided: bool) -> Flow {
        if decided {
            Flow::Done(Ok(Action::await_change()))
        } else {
            Flow::Next
        }
    }
}

/// Cancelled at its deadline (and not cancelled by spec since): finished, no new session.
fn finished_at_deadline(ra: &RemoteAssistance) -> bool {
    ra.status
        .as_ref()
        .is_some_and(|s| s.deadline_exceeded_at.is_some())
        && !ra.spec.cancelled
}

/// The cloud reported the session closed and nobody asked for a cancel since.
fn closed_and_not_cancelled(ra: &RemoteAssistance) -> bool {
    ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Closed) && !ra.spec.cancelled
}

impl Step<'_> {
    /// The apply: the first of [`APPLY_SUB_STEPS`] that decides ends the reconcile; when none
    /// does, the session is cancelled (spec.cancelled) or started, adopted or observed.
    pub(super) async fn apply_steps(&mut self) -> Result<Action> {
        for sub_step in APPLY_SUB_STEPS {
            if let Flow::Done(outcome) = self.apply_sub_step(sub_step).await {
                return outcome;
            }
        }
        self.cancel_or_observe().await
    }

    async fn apply_sub_step(&mut self, sub_step: ApplySubStep) -> Flow {
        match sub_step {
            ApplySubStep::Paused => self.when_paused().await,
            ApplySubStep::Deadline => self.when_deadline_passed().await,
            ApplySubStep::InvalidSpec => self.when_spec_invalid().await,
            ApplySubStep::Ttl => self.when_ttl_passed().await,
            ApplySubStep::FinishedAtDeadline => Flow::done_if(finished_at_deadline(&self.ra)),
            ApplySubStep::CancelConfirmed => self.when_cancel_confirmed().await,
            ApplySubStep::Closed => Flow::done_if(closed_and_not_cancelled(&self.ra)),
            ApplySubStep::PollNotDue => Flow::done_if(self.poll_not_due()),
            ApplySubStep::BindingChanged => self.when_binding_changed().await,
            ApplySubStep::DesktopInUse => self.when_desktop_in_use().await,
        }
    }

    /// Paused: nothing is called, except that the cluster admin's --max-duration holds even
    /// for a paused resource (its own maxDuration waits for the unpause).
    async fn when_paused(&mut self) -> Flow {
        if !is_paused(&self.ra) {
            return Flow::Next;
        }
        if self.admin_deadline_passed() {
            return Flow::Done(self.cancel_at_deadline().await);
        }
        Flow::Done(
            self.write(&Conclusion::Paused, 0, |_| {})
                .await
                .map(|()| Action::await_change()),
        )
    }

    async fn when_deadline_passed(&mut self) -> Flow {
        if !self.deadline_passed() {
            return Flow::Next;
        }
        Flow::Done(self.cancel_at_deadline().await)
    }

    /// An invalid spec is reported before any cloud call (a held session's deadline, from the
    /// operator's maximum at least, was looked at before all the same).
    async fn when_spec_invalid(&mut self) -> Flow {
        let Err(message) = deadline::validate(&self.ra) else {
            return Flow::Next;
        };
        let op = if self.ra.spec.cancelled {
            Operation::CancelRemoteAssistance
        } else {
            Operation::ShowDesktopRemoteAssistanceInfo
        };
        Flow::Done(self.fail(Error::InvalidSpec(message), op, 0).await)
    }

    async fn when_ttl_passed(&mut self) -> Flow {
        match self.delete_if_expired().await {
            Ok(false) => Flow::Next,
            Ok(true) => Flow::Done(Ok(Action::await_change())),
            Err(e) => Flow::Done(Err(e)),
        }
    }

    async fn when_cancel_confirmed(&mut self) -> Flow {
        if !self.spec_cancelled_done() {
            return Flow::Next;
        }
        Flow::Done(self.record_cancelled(0).await.map(|()| Action::await_change()))
    }

    /// Our own status writes trigger reconciles too: a held session is observed only when its
    /// poll is due (the poll scan asks for a reconcile then).
    fn poll_not_due(&self) -> bool {
        !self.ra.spec.cancelled
            && matches!(self.phase(), Some(Phase::Active | Phase::Pending))
            && self.binding().is_some()
            && self
                .ctx
                .observations
                .next_in(&self.uid(), self.ra.metadata.generation)
                .is_some()
    }

    /// A field that says where the held session lives changed: nothing is sent to the new place
    /// (a cancel still goes where the session was opened).
    async fn when_binding_changed(&mut self) -> Flow {
        if self.ra.spec.cancelled {
            return Flow::Next;
        }
        let Some(field) = self.binding_changed() else {
            return Flow::Next;
        };
        let error = Error::SessionBindingChanged(field.to_string());
        Flow::Done(
            self.fail(error, Operation::ShowDesktopRemoteAssistanceInfo, 0)
                .await,
        )
    }

    /// A new session, or adopting one: only if no other resource holds the desktop.
    async fn when_desktop_in_use(&mut self) -> Flow {
        if self.ra.spec.cancelled || self.binding().is_some() {
            return Flow::Next;
        }
        match self.claim_desktop() {
            Some(holder) => Flow::Done(self.desktop_in_use(&holder).await),
            None => Flow::Next,
        }
    }

    /// What no sub-step decided: cancel the session (spec.cancelled), or start, adopt or
    /// observe it.
    async fn cancel_or_observe(&mut self) -> Result<Action> {
        let (target, creds) = match self.prepare().await {
            Ok(p) => p,
            Err(error) => {
                let op = if self.ra.spec.cancelled {
                    Operation::CancelRemoteAssistance
                } else {
                    Operation::ShowDesktopRemoteAssistanceInfo
                };
                return self.fail(error, op, 0).await;
            }
        };
        if self.ra.spec.cancelled {
            return match self.end_session(&target, &creds).await {
                Ok((calls, _)) => {
                    self.ctx.metrics.cancelled("spec");
                    self.record_cancelled(calls).await?;
                    Ok(Action::await_change())
                }
                Err(failed) => {
                    self.fail(failed.error, failed.operation, failed.cancel_calls)
                        .await
                }
            };
        }
        self.start_adopt_or_observe(&target, &creds).await
    }

    /// The cleanup: the first of [`CLEANUP_SUB_STEPS`] that decides ends the reconcile; when
    /// none does, the session is ended by the release rule and the object let go.
    pub(super) async fn cleanup_steps(&mut self) -> Result<Action> {
        for sub_step in CLEANUP_SUB_STEPS {
            if let Flow::Done(outcome) = self.cleanup_sub_step(sub_step).await {
                return outcome;
            }
        }
        self.cancel_and_let_go().await
    }

    async fn cleanup_sub_step(&mut self, sub_step: CleanupSubStep) -> Flow {
        match sub_step {
            CleanupSubStep::Paused => self.when_deletion_paused().await,
            CleanupSubStep::Orphan => self.when_orphaned().await,
            CleanupSubStep::CancelConfirmed => {
                if !self.already_done() {
                    return Flow::Next;
                }
                Flow::Done(self.let_go_without_cancel(Evidence::CancelConfirmed).await)
            }
            CleanupSubStep::DesktopHeldByAnother => self.when_never_held_and_desktop_taken().await,
        }
    }

    /// A paused deletion keeps the finalizer, except past the cluster admin's --max-duration.
    async fn when_deletion_paused(&mut self) -> Flow {
        if !is_paused(&self.ra) || self.admin_deadline_passed() {
            return Flow::Next;
        }
        Flow::Done(
            self.write(&Conclusion::Paused, 0, |_| {})
                .await
                .and(Err(Error::Paused)),
        )
    }

    /// Deletion policy Orphan leaves the session alone, unless the operator refuses that for a
    /// time-boxed session (--refuse-orphan-time-boxed: the admin's time box outlives it).
    async fn when_orphaned(&mut self) -> Flow {
        let namespace_policy = match self.namespace_policy().await {
            Ok(p) => p,
            Err(e) => return Flow::Done(Err(e)),
        };
        let policy = deletion_policy(
            &self.ra,
            namespace_policy.as_deref(),
            self.ctx.config.default_deletion_policy,
        );
        if policy != DeletionPolicy::Orphan {
            return Flow::Next;
        }
        let time_boxed = self.binding().is_some()
            && deadline::enforced_max_duration(&self.ra, &self.ctx.config.limits).is_some();
        if self.ctx.config.refuse_orphan_time_boxed && time_boxed {
            info!("deletion policy Orphan refused for a time-boxed session: cancelling it");
            self.ctx.publish(&self.ra, EventType::Warning, "OrphanRefused", "Deletion policy Orphan is refused for a session with a deadline (--refuse-orphan-time-boxed): cancelling it", "Delete");
            return Flow::Next;
        }
        info!("deletion policy Orphan: leaving the cloud session alone");
        self.ctx.publish(
            &self.ra,
            EventType::Normal,
            "Orphaned",
            "Deleted without cancelling the remote assistance (deletion policy Orphan)",
            "Delete",
        );
        Flow::Done(self.let_go_without_cancel(Evidence::Orphan).await)
    }

    /// A resource that never held a session, for a desktop another resource holds, has nothing
    /// of its own to cancel: a cancel would end the holder's session.
    async fn when_never_held_and_desktop_taken(&mut self) -> Flow {
        if self.binding().is_some() || !self.desktop_held_by_another() {
            return Flow::Next;
        }
        info!(
            "never held a session, and another resource holds the desktop: nothing of this resource's to cancel"
        );
        self.ctx.publish(
            &self.ra,
            EventType::Normal,
            "NothingToCancel",
            "This resource never held a session; another resource holds the desktop's",
            "Cancel",
        );
        Flow::Done(self.let_go_without_cancel(Evidence::HeldByAnother).await)
    }

    /// What no sub-step decided: end the session by the release rule, then let the object go.
    async fn cancel_and_let_go(&mut self) -> Result<Action> {
        let (target, creds) = match self.prepare().await {
            Ok(p) => p,
            Err(error) => return self.fail(error, Operation::CancelRemoteAssistance, 0).await,
        };
        // The session's secret parts go while the cancel is on its way; the finalizer does not
        // wait for them (the Secret is owned by this resource).
        invitation::delete_secret_in_background(self.ctx, &self.ra);
        match self.end_session(&target, &creds).await {
            Ok(_) => {
                self.ctx.metrics.cancelled("deletion");
                self.unpin_credentials().await?;
                self.let_go_of_desktop();
                Ok(Action::await_change())
            }
            Err(failed) => {
                self.fail(failed.error, failed.operation, failed.cancel_calls)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sub_step_runs_once_in_the_order_that_is_the_policy() {
        let position = |step| APPLY_SUB_STEPS.iter().position(|s| *s == step).unwrap();
        for step in APPLY_SUB_STEPS {
            assert_eq!(
                APPLY_SUB_STEPS.iter().filter(|s| **s == step).count(),
                1,
                "{step:?}"
            );
        }
        // A pause holds everything but the admin's cap, which an invalid spec cannot turn off.
        assert_eq!(APPLY_SUB_STEPS[0], ApplySubStep::Paused);
        assert!(position(ApplySubStep::Deadline) < position(ApplySubStep::InvalidSpec));
        // Nothing decided from a spec that cannot be read.
        assert!(position(ApplySubStep::InvalidSpec) < position(ApplySubStep::Ttl));
        // A session at a new place is never polled there, nor claimed again.
        assert!(position(ApplySubStep::PollNotDue) < position(ApplySubStep::BindingChanged));
        assert_eq!(APPLY_SUB_STEPS.last(), Some(&ApplySubStep::DesktopInUse));
        // A paused deletion keeps its finalizer whatever the policy; an Orphan makes no call.
        assert_eq!(
            CLEANUP_SUB_STEPS,
            [
                CleanupSubStep::Paused,
                CleanupSubStep::Orphan,
                CleanupSubStep::CancelConfirmed,
                CleanupSubStep::DesktopHeldByAnother
            ]
        );
    }

    #[test]
    fn finished_and_closed_objects_wait_unless_cancelled() {
        use crate::resource::RemoteAssistanceStatus;
        let mut ra = crate::resource::sample("x");
        assert!(!finished_at_deadline(&ra) && !closed_and_not_cancelled(&ra));
        ra.status = Some(RemoteAssistanceStatus {
            phase: Some(Phase::Closed),
            deadline_exceeded_at: Some(Time(jiff::Timestamp::now())),
            ..RemoteAssistanceStatus::default()
        });
        assert!(finished_at_deadline(&ra) && closed_and_not_cancelled(&ra));
        ra.spec.cancelled = true;
        assert!(!finished_at_deadline(&ra) && !closed_and_not_cancelled(&ra));
        assert!(matches!(Flow::done_if(false), Flow::Next));
        assert!(matches!(Flow::done_if(true), Flow::Done(Ok(_))));
    }
}
