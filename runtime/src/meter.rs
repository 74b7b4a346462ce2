//! What lock calls report: metrics (feature `metrics`, on the `metrics`
//! crate's facade) and `tracing` spans.
//!
//! Every metric is named `advisory_locked_…` and labelled `entry` (the
//! registry entry); the per-key ones also `key`: the key as written in the
//! attribute (a template's text, never the value of one call), or for a
//! [`Locker`](crate::Locker) call the name of a key made from a `&'static str`
//! (a literal), else [`DYNAMIC`]. So the number of series stays bounded by
//! the program's text. The list is in the guide (`docs/guide.md`, "Metrics
//! and traces").
//!
//! Without the feature, nothing here records anything: the metric calls are
//! compiled out, [`Clock`] and [`Holding`] are empty. The spans are always
//! there (`tracing` is a dependency anyway); a span no subscriber wants
//! costs a check of the callsite's interest.

use std::future::Future;
use std::pin::Pin;

use crate::{Error, LockKey, Mode};

/// The `key` label of a key whose name is not known to be bounded (made at
/// run time: a computed name, a raw number).
pub(crate) const DYNAMIC: &str = "(dynamic)";

/// The `key` label of a [`Locker`](crate::Locker) call's key: its name if
/// that is a `&'static str`, else [`DYNAMIC`].
pub(crate) fn label_of(key: &LockKey) -> &'static str {
    key.static_name().unwrap_or(DYNAMIC)
}

/// The metric names, each with its kind and unit (see the guide).
#[cfg(feature = "metrics")]
mod names {
    pub(crate) const ACQUIRED: &str = "advisory_locked_acquired_total";
    pub(crate) const SKIPPED: &str = "advisory_locked_skipped_total";
    pub(crate) const WAITED: &str = "advisory_locked_waited_total";
    pub(crate) const TIMED_OUT: &str = "advisory_locked_timed_out_total";
    pub(crate) const LOST: &str = "advisory_locked_lost_total";
    pub(crate) const ERRORS: &str = "advisory_locked_errors_total";
    pub(crate) const STATEMENTS: &str = "advisory_locked_statements_total";
    pub(crate) const SESSIONS_OPENED: &str = "advisory_locked_sessions_opened_total";
    pub(crate) const ACQUIRE_SECONDS: &str = "advisory_locked_acquire_seconds";
    pub(crate) const WAIT_SECONDS: &str = "advisory_locked_wait_seconds";
    pub(crate) const HOLD_SECONDS: &str = "advisory_locked_hold_seconds";
    pub(crate) const LOCKS_HELD: &str = "advisory_locked_locks_held";
    pub(crate) const SESSIONS_OPEN: &str = "advisory_locked_sessions_open";
    pub(crate) const WAIT_SESSIONS_BUSY: &str = "advisory_locked_wait_sessions_busy";
}

#[cfg(feature = "metrics")]
pub(crate) use names::*;

/// One lock call: the entry, the key's label and the mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) entry: &'a str,
    /// The `key` label (bounded: see the module's documentation).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) key: &'a str,
    pub(crate) mode: Mode,
}

/// When an acquisition began (nothing without the feature).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    #[cfg(feature = "metrics")]
    start: std::time::Instant,
}

impl Clock {
    #[inline]
    pub(crate) fn start() -> Clock {
        Clock {
            #[cfg(feature = "metrics")]
            start: std::time::Instant::now(),
        }
    }
}

/// The name of an error's variant (the `kind` label of
/// `advisory_locked_errors_total`).
#[cfg(feature = "metrics")]
pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::NotConfigured { .. } => "not_configured",
        Error::AlreadyConfigured { .. } => "already_configured",
        Error::InvalidConfig { .. } => "invalid_config",
        Error::InvalidKey { .. } => "invalid_key",
        Error::Connect { .. } => "connect",
        Error::ConnectTimeout { .. } => "connect_timeout",
        Error::PoolExhausted { .. } => "pool_exhausted",
        Error::Standby { .. } => "standby",
        Error::TransactionPooler { .. } => "transaction_pooler",
        Error::FakeAdvisoryLocks { .. } => "fake_advisory_locks",
        Error::WaitTimeout { .. } => "wait_timeout",
        Error::LockLost { .. } => "lock_lost",
        Error::Query { .. } => "query",
        Error::Unavailable { .. } => "unavailable",
        Error::QuorumUnavailable { .. } => "quorum_unavailable",
        Error::SessionEnded { .. } => "session_ended",
        Error::Transaction { .. } => "transaction",
        Error::TransactionScopeOnly { .. } => "transaction_scope_only",
        Error::TransactionConnectionsBusy { .. } => "transaction_connections_busy",
    }
}

/// Polls an acquisition with its span entered around each poll, in place.
///
/// One future type whether or not a subscriber wants the span: awaiting
/// the acquisition either bare or under `Instrument` would compile it (and
/// everything it inlines) twice, and `Instrument` would also move the whole
/// future into its wrapper. Entering a disabled span is a branch. (An
/// acquisition dropped before it ends is dropped outside the span: none of
/// its drops records an event.)
pub(crate) fn in_span<'a, F: Future>(
    span: &'a tracing::Span,
    mut acquiring: Pin<&'a mut F>,
) -> impl Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        let _entered = span.enter();
        acquiring.as_mut().poll(cx)
    })
}

impl Call<'_> {
    /// The span around an acquisition (`wait`: a wait-mode call). Its
    /// `outcome` is recorded when the acquisition ends.
    #[inline]
    pub(crate) fn acquire_span(&self, key: &LockKey, wait: bool) -> tracing::Span {
        tracing::info_span!(
            "advisory_locked.acquire",
            entry = self.entry,
            key = key.name(),
            mode = self.mode.as_str(),
            wait,
            outcome = tracing::field::Empty,
        )
    }

    #[cfg(feature = "metrics")]
    fn labels(&self) -> Vec<::metrics::Label> {
        vec![
            ::metrics::Label::new("entry", self.entry.to_owned()),
            ::metrics::Label::new("key", self.key.to_owned()),
        ]
    }

    /// Granted; `waited`: not at the first try. `lost` tells, when the
    /// guard ends, whether the lock was lost while held.
    #[inline]
    pub(crate) fn granted(
        &self,
        span: &tracing::Span,
        clock: Clock,
        waited: bool,
        lost: impl FnOnce() -> LostProbe,
    ) -> Holding {
        span.record("outcome", if waited { "waited" } else { "acquired" });
        #[cfg(feature = "metrics")]
        {
            let labels = self.labels();
            let secs = clock.start.elapsed().as_secs_f64();
            ::metrics::counter!(ACQUIRED, labels.iter()).increment(1);
            ::metrics::histogram!(ACQUIRE_SECONDS, labels.iter()).record(secs);
            if waited {
                ::metrics::counter!(WAITED, labels.iter()).increment(1);
                ::metrics::histogram!(WAIT_SECONDS, labels.iter()).record(secs);
            }
            ::metrics::gauge!(LOCKS_HELD, labels.iter()).increment(1.0);
            Holding {
                inner: Some(Box::new(HoldingInner {
                    labels,
                    since: std::time::Instant::now(),
                    lost: lost(),
                })),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (clock, lost);
            Holding {}
        }
    }

    /// A try-lock found the key busy.
    #[inline]
    pub(crate) fn skipped(&self, span: &tracing::Span) {
        span.record("outcome", "skipped");
        #[cfg(feature = "metrics")]
        ::metrics::counter!(SKIPPED, self.labels()).increment(1);
    }

    /// The acquisition failed: a wait that timed out, or an error.
    #[inline]
    pub(crate) fn failed(&self, span: &tracing::Span, clock: Clock, e: &Error) {
        let timed_out = matches!(e, Error::WaitTimeout { .. });
        span.record("outcome", if timed_out { "timed_out" } else { "error" });
        #[cfg(feature = "metrics")]
        {
            let mut labels = self.labels();
            if timed_out {
                ::metrics::counter!(TIMED_OUT, labels.iter()).increment(1);
                let secs = clock.start.elapsed().as_secs_f64();
                ::metrics::histogram!(WAIT_SECONDS, labels.iter()).record(secs);
            } else {
                labels.push(::metrics::Label::new("kind", error_kind(e)));
                ::metrics::counter!(ERRORS, labels.iter()).increment(1);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = clock;
    }
}

/// The span the body of an annotated call runs in, while the lock is held.
#[inline]
pub(crate) fn hold_span(entry: &str, key: &LockKey, mode: Mode) -> tracing::Span {
    tracing::info_span!(
        "advisory_locked.hold",
        entry,
        key = key.name(),
        mode = mode.as_str(),
    )
}

/// Tells, when a guard ends, whether its lock was lost while held.
pub(crate) type LostProbe = Box<dyn Fn() -> bool + Send + Sync>;

/// A granted lock, as the metrics see it: when it ends (its guard is
/// released or dropped), the hold time is recorded, the held gauge goes
/// down, and a lost lock is counted. Empty without the feature.
///
/// Boxed (8 bytes in every [`crate::LockGuard`]): with the feature, a hold
/// allocates its labels and probe anyway.
#[derive(Default)]
pub(crate) struct Holding {
    #[cfg(feature = "metrics")]
    inner: Option<Box<HoldingInner>>,
}

impl Holding {
    /// Ends the hold now (as dropping it does).
    #[inline]
    pub(crate) fn end(self) {}
}

#[cfg(feature = "metrics")]
struct HoldingInner {
    labels: Vec<::metrics::Label>,
    since: std::time::Instant,
    lost: LostProbe,
}

#[cfg(feature = "metrics")]
impl Drop for Holding {
    fn drop(&mut self) {
        let Some(h) = self.inner.take() else {
            return;
        };
        let secs = h.since.elapsed().as_secs_f64();
        ::metrics::histogram!(HOLD_SECONDS, h.labels.iter()).record(secs);
        ::metrics::gauge!(LOCKS_HELD, h.labels.iter()).decrement(1.0);
        if (h.lost)() {
            ::metrics::counter!(LOST, h.labels.iter()).increment(1);
        }
    }
}

/// Per-entry metric handles of the lock sessions (statements, sessions),
/// kept in [`crate::stats::Counters`]. Empty without the feature.
#[derive(Debug)]
pub(crate) struct EntryMetrics {
    #[cfg(feature = "metrics")]
    pub(crate) statements: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    pub(crate) sessions_opened: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    pub(crate) sessions_open: ::metrics::Gauge,
    #[cfg(feature = "metrics")]
    pub(crate) wait_sessions_busy: ::metrics::Gauge,
}

impl EntryMetrics {
    /// The handles of entry `entry`.
    pub(crate) fn new(entry: &str) -> EntryMetrics {
        #[cfg(feature = "metrics")]
        {
            let labels = [::metrics::Label::new("entry", entry.to_owned())];
            EntryMetrics {
                statements: ::metrics::counter!(STATEMENTS, labels.iter()),
                sessions_opened: ::metrics::counter!(SESSIONS_OPENED, labels.iter()),
                sessions_open: ::metrics::gauge!(SESSIONS_OPEN, labels.iter()),
                wait_sessions_busy: ::metrics::gauge!(WAIT_SESSIONS_BUSY, labels.iter()),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = entry;
            EntryMetrics {}
        }
    }

    #[inline]
    pub(crate) fn statements(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.statements.increment(n);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }

    #[inline]
    pub(crate) fn session_opened(&self) {
        #[cfg(feature = "metrics")]
        {
            self.sessions_opened.increment(1);
            self.sessions_open.increment(1.0);
        }
    }

    #[inline]
    pub(crate) fn session_closed(&self) {
        #[cfg(feature = "metrics")]
        self.sessions_open.decrement(1.0);
    }

    /// A wait on the server starts on a wait session; it ends when the
    /// returned value drops.
    #[inline]
    pub(crate) fn wait_session_busy(&self) -> BusyWaitSession<'_> {
        #[cfg(feature = "metrics")]
        self.wait_sessions_busy.increment(1.0);
        BusyWaitSession {
            #[cfg(feature = "metrics")]
            metrics: self,
            _entry: std::marker::PhantomData,
        }
    }
}

/// A wait session's wait in flight (see [`EntryMetrics::wait_session_busy`]).
pub(crate) struct BusyWaitSession<'a> {
    #[cfg(feature = "metrics")]
    metrics: &'a EntryMetrics,
    _entry: std::marker::PhantomData<&'a EntryMetrics>,
}

impl BusyWaitSession<'_> {
    /// The wait is over (as dropping it says).
    #[inline]
    pub(crate) fn end(self) {}
}

#[cfg(feature = "metrics")]
impl Drop for BusyWaitSession<'_> {
    fn drop(&mut self) {
        self.metrics.wait_sessions_busy.decrement(1.0);
    }
}
