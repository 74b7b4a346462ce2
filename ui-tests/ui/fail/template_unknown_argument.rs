use advisory_locked::advisory_locked;

#[advisory_locked(key = "tenant:{tenant}")]
async fn rebuild(tenant_id: u64, force: bool) {
    let _ = (tenant_id, force);
}

#[advisory_locked(key = "job:{job_id}")]
async fn no_arguments() {}

fn main() {}
