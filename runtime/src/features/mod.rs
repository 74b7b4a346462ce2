//! What is built on the [`Locker`](crate::Locker): fleet-wide limits, leader
//! election, the names of annotated keys, the status view, and locks on the
//! application's own connections.

pub mod external;
pub(crate) mod leader;
pub(crate) mod limit;
pub mod names;
pub mod status;
