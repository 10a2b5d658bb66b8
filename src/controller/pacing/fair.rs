//! Who goes first when reconciles and cloud calls wait: work that ends access (a deletion, a
//! spec cancel, a deadline) before anything else, and, within each class, one namespace after
//! another, so that no namespace takes more than its share while others wait.
//!
//! controller-runtime 0.20's priority queue is the anchor (there, work items carry a priority and
//! the queue hands out the highest first). kube-runtime's `Controller` has no priority: it runs
//! what falls due in the order it fell due, up to its concurrency. So the operator lets the
//! `Controller` start the reconciles that fall due (up to 1,024 at once) and orders them itself,
//! at the two places where they wait: the reconcile slots ([`Slots`], the `--concurrency` bound)
//! and the cloud budget ([`CloudBudget`], the `--cloud-rate-limit`). Both hand out what they have through one
//! [`FairQueue`]. A reconcile holds no slot while it waits for one, and holds only what the
//! gate needs before that (the object's `Arc` and the context), so waiting is cheap.
//!
//! An idle cluster still gives one namespace everything: the queue only orders waiters, it
//! never holds back a slot or a call nobody else wants.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use governor::DefaultDirectRateLimiter;
use tokio::sync::{Notify, oneshot};

/// What a piece of work does to access: work that ends it is served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A deletion, a spec cancel, a deadline that passed: a session may stay open until it runs.
    EndsAccess,
    /// Creates, adoptions, polls and the rest.
    Routine,
}

/// Whether the work on `ra` now ends access: it is being deleted, its spec says cancelled, or
/// the deadline in its status has passed.
pub fn ends_access(ra: &crate::resource::RemoteAssistance, now: jiff::Timestamp) -> bool {
    let past_deadline = ra
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
        .is_some_and(|t| t.0 <= now);
    ra.metadata.deletion_timestamp.is_some() || ra.spec.cancelled || past_deadline
}

/// Who waits: the namespace (the unit of fairness) and how urgent its work is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// The namespace the work is for.
    pub namespace: String,
    /// Whether the work ends access.
    pub urgency: Urgency,
}

impl Claimant {
    /// The claimant of the work on `ra` now: access-ending when the object is being deleted,
    /// its spec says cancelled, or the deadline in its status has passed.
    pub fn of(ra: &crate::resource::RemoteAssistance, now: jiff::Timestamp) -> Claimant {
        use kube::ResourceExt;
        Claimant {
            namespace: ra.namespace().unwrap_or_default(),
            urgency: if ends_access(ra, now) {
                Urgency::EndsAccess
            } else {
                Urgency::Routine
            },
        }
    }

    /// The same claimant with the urgency of one call: a cancel always ends access, whatever
    /// the reconcile that makes it.
    pub fn for_call(&self, cancel: bool) -> Claimant {
        Claimant {
            namespace: self.namespace.clone(),
            urgency: if cancel { Urgency::EndsAccess } else { self.urgency },
        }
    }
}

/// One class of waiters: the namespaces in turn, each namespace's waiters in arrival order.
#[derive(Debug)]
struct Class<T> {
    turns: VecDeque<String>,
    waiting: HashMap<String, VecDeque<T>>,
    len: usize,
}

impl<T> Default for Class<T> {
    fn default() -> Self {
        Class {
            turns: VecDeque::new(),
            waiting: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> Class<T> {
    fn push(&mut self, namespace: &str, item: T) {
        self.len += 1;
        match self.waiting.get_mut(namespace) {
            Some(queue) => queue.push_back(item),
            None => {
                self.waiting.insert(namespace.to_string(), VecDeque::from([item]));
                self.turns.push_back(namespace.to_string());
            }
        }
    }

    /// The next namespace's first waiter; the namespace goes to the back of the turns.
    fn pop(&mut self) -> Option<T> {
        let namespace = self.turns.pop_front()?;
        let queue = self.waiting.get_mut(&namespace)?;
        let item = queue.pop_front();
        self.len -= usize::from(item.is_some());
        if queue.is_empty() {
            self.waiting.remove(&namespace);
        } else {
            self.turns.push_back(namespace);
        }
        item
    }
}

/// Waiters in the order they are served: every access-ending waiter before any routine one, and
/// within a class one namespace after another (round robin).
#[derive(Debug)]
pub struct FairQueue<T> {
    ends_access: Class<T>,
    routine: Class<T>,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            ends_access: Class::default(),
            routine: Class::default(),
        }
    }
}

impl<T> FairQueue<T> {
    /// Adds a waiter.
    pub fn push(&mut self, claimant: &Claimant, item: T) {
        match claimant.urgency {
            Urgency::EndsAccess => self.ends_access.push(&claimant.namespace, item),
            Urgency::Routine => self.routine.push(&claimant.namespace, item),
        }
    }

    /// The waiter to serve next.
    pub fn pop(&mut self) -> Option<T> {
        self.ends_access.pop().or_else(|| self.routine.pop())
    }

    /// How many wait: access-ending, routine.
    pub fn len(&self) -> (usize, usize) {
        (self.ends_access.len, self.routine.len)
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

/// Hands the first waiter that is still there its turn; false when none is left. A waiter that
/// gave up (its future dropped) has closed its receiver, so the turn goes to the next one.
fn hand_over(queue: &mut FairQueue<oneshot::Sender<()>>) -> bool {
    while let Some(waiter) = queue.pop() {
        if waiter.send(()).is_ok() {
            return true;
        }
    }
    false
}

/// A turn handed out but not yet taken when its waiter gave up is given back with `give_back`.
async fn wait_turn(mut turn: oneshot::Receiver<()>, give_back: impl FnOnce()) {
    struct Pending<'a, F: FnOnce()> {
        turn: &'a mut oneshot::Receiver<()>,
        give_back: Option<F>,
        taken: bool,
    }
    impl<F: FnOnce()> Drop for Pending<'_, F> {
        fn drop(&mut self) {
            if self.taken {
                return;
            }
            self.turn.close();
            if self.turn.try_recv().is_ok()
                && let Some(give_back) = self.give_back.take()
            {
                give_back();
            }
        }
    }
    let mut pending = Pending {
        turn: &mut turn,
        give_back: Some(give_back),
        taken: false,
    };
    let _ = (&mut *pending.turn).await;
    pending.taken = true;
}

/// The reconcile slots (`--concurrency`): at most `size` reconciles past the gate at once,
/// handed out in the [`FairQueue`]'s order.
#[derive(Debug)]
pub struct Slots {
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    free: usize,
    queue: FairQueue<oneshot::Sender<()>>,
}

/// A reconcile slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
}

impl Slots {
    /// `size` slots.
    pub fn new(size: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(SlotState {
                free: size.max(1),
                queue: FairQueue::default(),
            }),
        })
    }

    /// Waits for a slot in `claimant`'s turn.
    pub async fn acquire(self: &Arc<Self>, claimant: &Claimant) -> Slot {
        let turn = {
            let mut state = self.state.lock().expect("slots");
            if state.free > 0 && state.queue.is_empty() {
                state.free -= 1;
                return Slot { slots: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            state.queue.push(claimant, tx);
            rx
        };
        wait_turn(turn, || self.release()).await;
        Slot { slots: self.clone() }
    }

    fn release(&self) {
        let mut state = self.state.lock().expect("slots");
        if !hand_over(&mut state.queue) {
            state.free += 1;
        }
    }

    /// How many wait for a slot: access-ending, routine.
    pub fn waiting(&self) -> (usize, usize) {
        self.state.lock().expect("slots").queue.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release();
    }
}

/// The overall cloud budget (`--cloud-rate-limit`): calls are let out at the limiter's pace,
/// in the [`FairQueue`]'s order, by one dispatcher task (started with the first call, stopped
/// when the budget is dropped).
pub struct CloudBudget {
    shared: Arc<BudgetShared>,
    dispatcher: OnceLock<tokio::task::JoinHandle<()>>,
}

struct BudgetShared {
    limiter: DefaultDirectRateLimiter,
    queue: Mutex<FairQueue<oneshot::Sender<()>>>,
    arrived: Notify,
}

impl CloudBudget {
    /// A budget paced by `limiter`.
    pub fn new(limiter: DefaultDirectRateLimiter) -> CloudBudget {
        CloudBudget {
            shared: Arc::new(BudgetShared {
                limiter,
                queue: Mutex::default(),
                arrived: Notify::new(),
            }),
            dispatcher: OnceLock::new(),
        }
    }

    /// Waits for `claimant`'s turn to make one call.
    pub async fn take(&self, claimant: &Claimant) {
        self.dispatcher
            .get_or_init(|| tokio::spawn(dispatch(self.shared.clone())));
        let (tx, rx) = oneshot::channel();
        self.shared.queue.lock().expect("cloud budget").push(claimant, tx);
        self.shared.arrived.notify_one();
        // A turn handed to a caller that gave up is lost: the next call waits one interval
        // more, never less (the limit holds).
        wait_turn(rx, || {}).await;
    }

    /// How many calls wait for the budget: access-ending, routine.
    pub fn waiting(&self) -> (usize, usize) {
        self.shared.queue.lock().expect("cloud budget").len()
    }
}

impl Drop for CloudBudget {
    fn drop(&mut self) {
        if let Some(task) = self.dispatcher.get() {
            task.abort();
        }
    }
}

/// Lets one waiter out per interval of the limiter, while any wait.
async fn dispatch(shared: Arc<BudgetShared>) {
    loop {
        let arrived = shared.arrived.notified();
        if shared.queue.lock().expect("cloud budget").is_empty() {
            arrived.await;
            continue;
        }
        shared.limiter.until_ready().await;
        hand_over(&mut shared.queue.lock().expect("cloud budget"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimant(namespace: &str, urgency: Urgency) -> Claimant {
        Claimant {
            namespace: namespace.into(),
            urgency,
        }
    }

    #[test]
    fn access_ending_work_first_then_namespaces_in_turn() {
        let mut q = FairQueue::default();
        for i in 0..4 {
            q.push(&claimant("noisy", Urgency::Routine), format!("noisy-{i}"));
        }
        q.push(&claimant("quiet", Urgency::Routine), "quiet-0".to_string());
        q.push(
            &claimant("quiet", Urgency::EndsAccess),
            "quiet-cancel".to_string(),
        );
        q.push(
            &claimant("noisy", Urgency::EndsAccess),
            "noisy-cancel".to_string(),
        );
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            [
                "quiet-cancel",
                "noisy-cancel",
                "noisy-0",
                "quiet-0",
                "noisy-1",
                "noisy-2",
                "noisy-3"
            ],
            "cancels first in arrival order of their namespaces, then one per namespace in turn"
        );
        assert!(q.is_empty());
    }

    #[test]
    fn one_namespace_alone_gets_everything() {
        let mut q = FairQueue::default();
        for i in 0..3 {
            q.push(&claimant("only", Urgency::Routine), i);
        }
        assert_eq!(std::iter::from_fn(|| q.pop()).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[tokio::test]
    async fn slots_go_to_cancels_first_and_a_waiter_that_gives_up_passes_its_turn_on() {
        let slots = Slots::new(1);
        let held = slots.acquire(&claimant("a", Urgency::Routine)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, urgency) in [
            ("create", Urgency::Routine),
            ("gives-up", Urgency::EndsAccess),
            ("cancel", Urgency::EndsAccess),
        ] {
            let (slots, order) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire(&claimant("b", urgency)).await;
                order.lock().unwrap().push(name);
            }));
            tokio::task::yield_now().await;
        }
        while slots.waiting() != (2, 1) {
            tokio::task::yield_now().await;
        }
        let gave_up = tasks.remove(1);
        gave_up.abort();
        let _ = gave_up.await;
        drop(held);
        for t in tasks {
            let _ = t.await;
        }
        assert_eq!(*order.lock().unwrap(), ["cancel", "create"]);
        // Every slot came back.
        let _a = slots.acquire(&claimant("a", Urgency::Routine)).await;
        assert_eq!(slots.waiting(), (0, 0));
    }

    #[tokio::test]
    async fn the_budget_serves_cancels_before_queued_calls() {
        use std::num::NonZeroU32;
        let budget = Arc::new(CloudBudget::new(governor::RateLimiter::direct(
            crate::controller::pacing::cloud_calls::cloud_quota(NonZeroU32::new(10).unwrap()),
        )));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (budget, order) = (budget.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                budget.take(&claimant("noisy", Urgency::Routine)).await;
                order.lock().unwrap().push(format!("create-{i}"));
            }));
        }
        while budget.waiting().1 < 4 {
            tokio::task::yield_now().await;
        }
        let (b, o) = (budget.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            b.take(&claimant("quiet", Urgency::EndsAccess)).await;
            o.lock().unwrap().push("cancel".to_string());
        }));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let cancel = order.iter().position(|n| n == "cancel").unwrap();
        assert!(cancel <= 2, "the cancel overtook the queued creates: {order:?}");
    }
}
