//! The rewritten fns' futures are `Send + 'static` when the body's is, so
//! they can be spawned.
use advisory_locked::advisory_locked;

#[advisory_locked(key = "tenant:{tenant_id}", wait = "30s")]
async fn rebuild(tenant_id: u64, name: String) -> usize {
    tokio::task::yield_now().await;
    name.len() + tenant_id as usize
}

#[advisory_locked(key = "report:daily")]
async fn report() -> Result<(), std::io::Error> {
    Ok(())
}

fn assert_spawnable<F: std::future::Future + Send + 'static>(f: F) -> F
where
    F::Output: Send + 'static,
{
    f
}

fn main() {
    drop(assert_spawnable(rebuild(7, "x".into())));
    drop(assert_spawnable(report()));
}
