// Every mistake is reported at once, each at its own token.
use advisory_locked::advisory_locked;

#[advisory_locked(
    key = "tenant:{tenant}:{id:?}",
    wiat = "30s",
    shared = true,
    pool = "",
    wait = "5 sec",
    shared
)]
fn rebuild(tenant_id: u64) -> impl Sized {
    tenant_id
}

fn main() {
    let _ = rebuild(1);
}
