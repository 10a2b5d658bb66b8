//! Pacing: when a resource may call the cloud again (per object: the gate; per credential: the
//! breaker; overall: the rate limit and the leader's fence, in `cloud_calls`), and when it must be
//! looked at again (polls of open sessions, timers for deadlines and TTLs); who goes first when
//! reconciles and calls wait (`fair`: access-ending work first, namespaces in turn).

pub(crate) mod breaker;
pub(crate) mod cloud_calls;
pub(crate) mod fair;
pub(crate) mod gate;
pub(crate) mod polls;
pub(crate) mod timers;
