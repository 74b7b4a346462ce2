//! Visibility, doc comments, other attributes (outer and inner) and
//! `unsafe` are kept.
#![deny(missing_docs)]

/// Locked jobs; `missing_docs` checks that their docs are kept.
pub mod jobs {
    use advisory_locked::advisory_locked;

    /// Runs the daily report.
    #[advisory_locked(key = "report:daily")]
    #[inline]
    #[must_use]
    pub async fn daily() -> u32 {
        #![allow(clippy::let_and_return)]
        let n = 1;
        n
    }

    /// Visible in the crate only.
    #[allow(unused_variables)]
    #[advisory_locked(key = "internal", wait)]
    pub(crate) async fn internal(unused: u8) {}

    /// Kept `unsafe`.
    ///
    /// # Safety
    /// None needed; this checks that `unsafe` is kept.
    #[advisory_locked(key = "unsafe")]
    pub async unsafe fn dangerous(p: *const u8) -> u8 {
        *p
    }

    #[cfg(any())]
    #[advisory_locked(key = "configured-out")]
    pub async fn configured_out() {}
}

async fn callers() -> Result<(), advisory_locked::Error> {
    let _: advisory_locked::Outcome<u32> = jobs::daily().await?;
    jobs::internal(1).await?;
    let x = 1u8;
    // SAFETY: `x` is alive.
    let _: advisory_locked::Outcome<u8> = unsafe { jobs::dangerous(&x) }.await?;
    Ok(())
}

/// Builds the futures without running them.
fn main() {
    drop(callers());
}
