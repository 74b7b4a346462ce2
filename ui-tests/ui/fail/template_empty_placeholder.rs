use advisory_locked::advisory_locked;

#[advisory_locked(key = "tenant:{}")]
async fn rebuild(tenant_id: u64) {
    let _ = tenant_id;
}

fn main() {}
