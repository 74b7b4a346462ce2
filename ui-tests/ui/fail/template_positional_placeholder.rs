use advisory_locked::advisory_locked;

#[advisory_locked(key = "tenant:{0}")]
async fn rebuild(tenant_id: u64) {
    let _ = tenant_id;
}

fn main() {}
