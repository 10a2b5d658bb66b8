//! The watches that feed the reconciles: which objects a (re)list or an event asks for, and how
//! the initial list is made (streaming where the API server has it).

pub(crate) mod after_lists;
pub(crate) mod streaming_lists;
