// Every annotated fn lists its key in `advisory_locked::names`, also in a
// crate that forbids unsafe code.
#![forbid(unsafe_code)]

use advisory_locked::names::{self, KeyKind};
use advisory_locked::{advisory_locked, key_hash, KeyId, Mode};

#[advisory_locked(key = "ui:report:daily")]
async fn daily() {}

#[advisory_locked(key = "ui:tenant:{t}", pool = "jobs", shared)]
async fn per_tenant(t: u32) {
    let _ = t;
}

#[advisory_locked(key = (11, 12), transaction = tx)]
async fn pair() {
    let _ = tx;
}

fn main() {
    drop((daily(), per_tenant(1), pair()));
    let known = names::known();
    let daily = known.iter().find(|k| k.name() == "ui:report:daily").expect("listed");
    assert_eq!(daily.id(), Some(KeyId::Int(key_hash("ui:report:daily"))));
    assert_eq!((daily.kind(), daily.pool(), daily.mode()), (KeyKind::Name, "default", Mode::Exclusive));
    assert!(daily.file().ends_with("key_names.rs"), "{}", daily.file());
    assert_eq!(daily.line(), 9);
    let tenant = known.iter().find(|k| k.name() == "ui:tenant:{t}").expect("listed");
    assert_eq!((tenant.id(), tenant.kind(), tenant.mode()), (None, KeyKind::Template, Mode::Shared));
    assert_eq!(names::name_of(KeyId::Pair(11, 12)), Some("(11, 12)"));
    assert!(names::collisions().is_empty());
}
