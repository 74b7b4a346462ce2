use advisory_locked::advisory_locked;

#[advisory_locked(key = "tenant:{tenant.name()}")]
async fn rebuild(tenant: String) {
    let _ = tenant;
}

fn main() {}
