//! `?` and `return` in the body keep their meaning: they leave the body with
//! the fn's written return type, converting errors through `From`.
use advisory_locked::{advisory_locked, Error, Outcome};

#[derive(Debug)]
#[allow(dead_code)] // the fields are only read through `Debug`
enum MyError {
    Parse(std::num::ParseIntError),
    Negative,
}

impl From<std::num::ParseIntError> for MyError {
    fn from(e: std::num::ParseIntError) -> Self {
        MyError::Parse(e)
    }
}

#[advisory_locked(key = "parse:{text}")]
async fn parse(text: String) -> Result<i64, MyError> {
    let n: i64 = text.trim().parse()?; // ParseIntError -> MyError
    if n < 0 {
        return Err(MyError::Negative);
    }
    if n == 0 {
        return Ok(0);
    }
    Ok(n * 2)
}

#[advisory_locked(key = "early", wait)]
async fn early(flag: bool) -> &'static str {
    if flag {
        return "early";
    }
    "late"
}

#[advisory_locked(key = "option")]
async fn option_question_mark(v: Vec<u8>) -> Option<u8> {
    let first = v.first()?;
    Some(*first)
}

async fn callers() -> Result<(), Error> {
    let parsed: Outcome<Result<i64, MyError>> = parse("21".into()).await?;
    if let Outcome::Ran(Err(e)) = &parsed {
        println!("{e:?}");
    }
    let _: &'static str = early(true).await?;
    let _: Outcome<Option<u8>> = option_question_mark(vec![1]).await?;
    Ok(())
}

fn main() {
    drop(callers());
}
