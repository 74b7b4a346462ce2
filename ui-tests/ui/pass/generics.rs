//! Generic fns, lifetimes and where clauses are kept as written.
use std::fmt::Display;

use advisory_locked::{advisory_locked, Error, Outcome};

#[advisory_locked(key = "generic:{id}")]
async fn generic<T: Clone + Send, Id>(id: Id, value: T) -> Vec<T>
where
    Id: Display + Send,
{
    vec![value.clone(), value]
}

#[advisory_locked(key = "borrowing", wait)]
async fn borrowing<'a>(text: &'a str, _other: &str) -> &'a str {
    text.trim()
}

#[advisory_locked(key = "impl-arg:{name}")]
async fn impl_trait_argument(name: impl Display) -> String {
    name.to_string()
}

struct Repo<T> {
    items: Vec<T>,
}

impl<T: Clone> Repo<T> {
    #[advisory_locked(key = "repo:{index}")]
    async fn get(&self, index: usize) -> Option<T> {
        self.items.get(index).cloned()
    }
}

async fn callers() -> Result<(), Error> {
    let _: Outcome<Vec<u8>> = generic::<u8, &str>("x", 1).await?;
    let owned = String::from(" x ");
    let _: &str = borrowing(&owned, "y").await?;
    let _: Outcome<String> = impl_trait_argument(5).await?;
    let repo = Repo { items: vec![1u8] };
    let _: Outcome<Option<u8>> = repo.get(0).await?;
    Ok(())
}

fn main() {
    drop(callers());
}
