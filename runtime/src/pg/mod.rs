//! The PostgreSQL layer: connecting, the lock sessions' own protocol
//! speaker, and every statement the crate sends.

pub(crate) mod connect;
pub(crate) mod protocol;
pub(crate) mod sql;
#[cfg(test)]
pub(crate) mod test_server;
pub(crate) mod wire;
