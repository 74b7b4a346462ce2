use advisory_locked::advisory_locked;

struct TenantId(u64);

#[advisory_locked(key = "tenant:{tenant_id}")]
async fn rebuild(tenant_id: TenantId) -> u64 {
    tenant_id.0
}

fn main() {
    drop(rebuild(TenantId(7)));
}
