//! What the project's bench measures below the public API (feature
//! `bench-internals`; not part of the API, no stability promised).

use crate::{Error, LockConfig};

/// A lock session driven by its caller, without the crate's dispatcher:
/// the crate's own protocol path alone (see `bench/README.md`, P1).
pub struct OwnProtocol(crate::session::bare::Bare);

impl OwnProtocol {
    /// Connects and sets up one lock session of `config`'s server, as the
    /// crate does.
    pub async fn connect(config: LockConfig) -> Result<OwnProtocol, Error> {
        let settings = config.into_settings()?;
        Ok(OwnProtocol(
            crate::session::bare::Bare::open(&settings).await?,
        ))
    }

    /// The session's server process id (for pinning it).
    pub fn backend_pid(&self) -> i32 {
        self.0.backend_pid()
    }

    /// Unlocks `unlock` and tries `lock` (exclusive, 64-bit keys) in one
    /// statement: (whether `unlock` was held, whether `lock` was granted).
    pub async fn unlock_and_try_lock(
        &mut self,
        unlock: i64,
        lock: i64,
    ) -> Result<(bool, bool), Error> {
        self.0.unlock_and_try_lock(unlock, lock).await
    }
}

/// What a wait session sends in a wait-mode handover of an exclusive
/// `bigint` key (`bench/README.md`, P3): its set-up's own `lock_timeout`
/// (the longest wait, with the default loss-detection bound), the wait
/// bounded by it (`$1` the key; answers 1 when granted at once, 2 after
/// waiting), and the release that may wake waiters of other processes (`$1`
/// the key; answers whether it was held).
pub fn handover_statements() -> [String; 3] {
    use crate::pg::sql::{Action, Form, Request, Statement};
    let one = |action| {
        Statement::One(Request {
            action,
            mode: crate::Mode::Exclusive,
            form: Form::Int8,
        })
        .sql()
    };
    let longest =
        crate::session::dispatch::Liveness::within(crate::DEFAULT_LOSS_DETECTION).longest_wait();
    let millis = crate::session::dispatch::wait_millis(longest);
    [
        crate::pg::sql::standing_lock_timeout(millis),
        one(Action::WaitStanding),
        one(Action::UnlockNotify),
    ]
}
