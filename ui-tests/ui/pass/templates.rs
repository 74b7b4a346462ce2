//! Key templates: arguments, fields of `self` and of arguments, tuple
//! indexes, escaped braces. The key is computed before the body moves the
//! arguments.
use advisory_locked::{advisory_locked, Error, Outcome};

struct Tenant {
    id: u64,
}

struct Job {
    tenant: Tenant,
    name: String,
}

struct Worker {
    id: u32,
    region: &'static str,
}

#[advisory_locked(key = "tenant:{tenant_id}")]
async fn by_tenant(tenant_id: u64) -> u64 {
    tenant_id
}

// `job` is moved by the body; the key was computed before.
#[advisory_locked(key = "job:{job.tenant.id}:{job.name}", wait = "10s")]
async fn by_job(job: Job) -> Job {
    job
}

#[advisory_locked(key = "pair:{pair.0}-{pair.1}")]
async fn by_pair(pair: (u32, String)) -> String {
    pair.1
}

#[advisory_locked(key = "{{literal}}:{name}:}}")]
async fn escaped_braces(name: &str) -> usize {
    name.len()
}

#[advisory_locked(key = "{{not a placeholder}}")]
async fn only_escaped_braces() {}

#[advisory_locked(key = "{r#type}")]
async fn raw_identifier(r#type: char) -> char {
    r#type
}

#[advisory_locked(key = "sum:{a}+{b}")]
async fn mutable_and_pattern_args(a: i32, mut b: i32, (c, d): (i32, i32), _: u8) -> i32 {
    b += c + d;
    a + b
}

type TenantId = u64;

// Integer arguments of every kind (written without `core::fmt`), next to
// ones that are formatted: a `ref` binding, an alias of an integer type.
#[advisory_locked(key = "ints:{a}:{b}:{r#c}:{d}:{alias}")]
async fn integer_kinds(a: usize, b: i8, r#c: isize, ref d: u16, alias: TenantId) -> u64 {
    a as u64 + b as u64 + r#c as u64 + u64::from(*d) + alias
}

#[advisory_locked(key = "all-ints:{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}/{j}")]
#[allow(clippy::too_many_arguments)]
async fn all_integer_types(
    a: u8,
    b: u16,
    c: u32,
    d: u64,
    e: usize,
    f: i8,
    g: i16,
    h: i32,
    i: i64,
    j: isize,
) -> i64 {
    i + h as i64 + g as i64 + f as i64 + j as i64 + (a as u64 + b as u64 + c as u64 + d + e as u64) as i64
}

impl Worker {
    #[advisory_locked(key = "worker:{self.region}/{self.id}")]
    async fn run(&self) -> u32 {
        self.id
    }

    #[advisory_locked(key = "worker:{self.id}:{attempt}", wait)]
    async fn retry(&mut self, attempt: u32) -> u32 {
        self.id += attempt;
        self.id
    }
}

async fn callers(worker: &mut Worker) -> Result<(), Error> {
    let _: Outcome<u64> = by_tenant(7).await?;
    let job = Job {
        tenant: Tenant { id: 1 },
        name: "sync".into(),
    };
    let _: Job = by_job(job).await?;
    let _: Outcome<String> = by_pair((1, "x".into())).await?;
    let _: Outcome<usize> = escaped_braces("n").await?;
    let _: Outcome<()> = only_escaped_braces().await?;
    let _: Outcome<char> = raw_identifier('c').await?;
    let _: Outcome<i32> = mutable_and_pattern_args(1, 2, (3, 4), 5).await?;
    let _: Outcome<u64> = integer_kinds(1, -2, 3, 4, 5).await?;
    let _: Outcome<i64> = all_integer_types(1, 2, 3, 4, 5, -6, -7, -8, -9, -10).await?;
    let _: Outcome<u32> = worker.run().await?;
    let _: u32 = worker.retry(2).await?;
    Ok(())
}

fn main() {
    let mut worker = Worker {
        id: 1,
        region: "eu",
    };
    drop(callers(&mut worker));
}
