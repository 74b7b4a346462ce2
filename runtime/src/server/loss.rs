//! What happens when a held lock is lost, and how a body can tell.
//!
//! A lock is only as good as the session that holds it: when the session
//! ends (server restart, `pg_terminate_backend`, a cut network noticed by the
//! heartbeat), the server has already freed the lock and another process
//! may take it. The policy decides what the body does then.

use std::future::Future;
use std::sync::Arc;

use crate::session::Session;
use crate::LockKey;

/// The lock a body runs under, as seen from inside the body.
///
/// ```no_run
/// use advisory_locked::advisory_locked;
///
/// #[advisory_locked(key = "export", on_lost = "continue")]
/// async fn export() {
///     for batch in 0..100 {
///         let still_mine = advisory_locked::current_lock().is_some_and(|l| l.is_held());
///         if !still_mine {
///             break; // another instance may be exporting now
///         }
///         // ... write batch ...
///         # let _ = batch;
///     }
/// }
/// ```
#[derive(Clone)]
pub struct LockState {
    key: LockKey,
    holder: Holder,
    token: Option<i64>,
}

/// What holds a lock: one session, or the sessions of a quorum's granting
/// members, of which `needed` must live; or nothing any more (a guard that
/// let go).
#[derive(Clone)]
pub(crate) enum Holder {
    Session(Arc<Session>),
    Released,
    Quorum {
        sessions: Arc<[Arc<Session>]>,
        needed: usize,
    },
}

impl Holder {
    pub(crate) fn is_held(&self) -> bool {
        match self {
            Holder::Session(s) => !s.is_dead(),
            Holder::Released => false,
            Holder::Quorum { sessions, needed } => {
                sessions.iter().filter(|s| !s.is_dead()).count() >= *needed
            }
        }
    }

    /// Resolves when the lock is lost: its session ended, or so many of a
    /// quorum's sessions that fewer than `needed` are left.
    ///
    /// (Not with `FuturesUnordered`: it wakes its task whenever it has
    /// polled every future once, which cost every annotated call a
    /// scheduler round.)
    pub(crate) fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        use futures_util::future::Either;
        let (sessions, needed): (&[Arc<Session>], usize) = match self {
            Holder::Session(s) => return Either::Left(s.closed()),
            // Lost already: resolves at once.
            Holder::Released => (&[], 1),
            Holder::Quorum { sessions, needed } => (sessions, *needed),
        };
        let mut closed: Vec<_> = sessions.iter().map(|s| Box::pin(s.closed())).collect();
        Either::Right(std::future::poll_fn(move |cx| {
            closed.retain_mut(|c| c.as_mut().poll(cx).is_pending());
            if closed.len() < needed {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }))
    }
}

impl std::fmt::Debug for LockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockState")
            .field("key", &self.key)
            .field("held", &self.is_held())
            .field("fencing_token", &self.token)
            .finish()
    }
}

impl LockState {
    pub(crate) fn new(key: LockKey, holder: Holder, token: Option<i64>) -> LockState {
        LockState { key, holder, token }
    }

    /// The key held.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// False once the session holding the lock is known to have ended
    /// (under a quorum: once fewer than a majority of its sessions live).
    pub fn is_held(&self) -> bool {
        self.holder.is_held()
    }

    /// Resolves when the lock is lost.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.holder.lost()
    }

    /// The grant's fencing token, if the registry entry has fencing tokens
    /// ([`LockConfig::fencing_tokens`](crate::LockConfig::fencing_tokens)):
    /// larger than the token of every earlier grant of this key. Shared
    /// holders of one process share their grant's token.
    pub fn fencing_token(&self) -> Option<i64> {
        self.token
    }
}

thread_local! {
    /// The lock of the body being polled on this thread (see [`Scope`]).
    static CURRENT: std::cell::RefCell<Option<LockState>> = const { std::cell::RefCell::new(None) };
}

/// The lock of the `#[advisory_locked]` body running in this task, if any
/// (inner-most when bodies nest). Not inherited by tasks the body spawns.
pub fn current_lock() -> Option<LockState> {
    CURRENT.with_borrow(Clone::clone)
}

/// Makes `state` the [`current_lock`] while a body is polled: entered
/// around each poll, it puts the state in place (moved, not cloned) and
/// puts the one before back when dropped, so nested bodies see their own
/// and a panicking poll leaves nothing behind.
pub(crate) struct Scope<'a> {
    state: &'a mut Option<LockState>,
    before: Option<LockState>,
}

impl<'a> Scope<'a> {
    pub(crate) fn enter(state: &'a mut Option<LockState>) -> Scope<'a> {
        let mine = state.take();
        let before = CURRENT.with(|c| c.replace(mine));
        Scope { state, before }
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        let before = self.before.take();
        *self.state = CURRENT.with(|c| c.replace(before));
    }
}
