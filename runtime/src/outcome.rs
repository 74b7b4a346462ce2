//! What a skip-mode call returns when the lock machinery worked.

/// The result of a call that skips when the lock is busy.
///
/// A function annotated with `#[advisory_locked(key = "…")]` (skip mode, the
/// default) returns `Result<Outcome<T>, advisory_locked::Error>` where `T` is
/// the return type written on the function:
///
/// - `Ok(Outcome::Ran(value))`: the lock was taken, the body ran and returned `value`;
/// - `Ok(Outcome::Skipped)`: another holder had the lock, the body did not run;
/// - `Err(error)`: the lock machinery failed (not configured, cannot connect, …).
///
/// ```
/// use advisory_locked::Outcome;
///
/// let ran: Outcome<u32> = Outcome::Ran(7);
/// assert_eq!(ran.ran(), Some(7));
/// assert!(Outcome::<u32>::Skipped.is_skipped());
/// ```
#[must_use = "an Outcome tells whether the body ran; a skipped call did nothing"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome<T> {
    /// The lock was held while the body ran; this is what the body returned.
    Ran(T),
    /// The lock was busy; the body did not run.
    Skipped,
}

impl<T> Outcome<T> {
    /// `Some(value)` if the body ran.
    pub fn ran(self) -> Option<T> {
        match self {
            Outcome::Ran(v) => Some(v),
            Outcome::Skipped => None,
        }
    }

    /// True if the body ran.
    pub fn is_ran(&self) -> bool {
        matches!(self, Outcome::Ran(_))
    }

    /// True if the lock was busy and the body did not run.
    pub fn is_skipped(&self) -> bool {
        matches!(self, Outcome::Skipped)
    }

    /// Maps the value of a body that ran.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Ran(v) => Outcome::Ran(f(v)),
            Outcome::Skipped => Outcome::Skipped,
        }
    }

    /// Borrows the value of a body that ran.
    pub fn as_ref(&self) -> Outcome<&T> {
        match self {
            Outcome::Ran(v) => Outcome::Ran(v),
            Outcome::Skipped => Outcome::Skipped,
        }
    }
}

impl<T> From<Outcome<T>> for Option<T> {
    fn from(o: Outcome<T>) -> Self {
        o.ran()
    }
}
