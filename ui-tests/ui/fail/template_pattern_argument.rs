use advisory_locked::advisory_locked;

#[advisory_locked(key = "point:{x}")]
async fn rebuild((x, y): (u32, u32)) {
    let _ = (x, y);
}

fn main() {}
