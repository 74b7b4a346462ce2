//! In-process coordination: the lock table that makes tasks of one process
//! exclude each other without a round trip, and the lanes that choose a
//! lock session for a new lock.

pub(crate) mod lanes;
pub(crate) mod table;
