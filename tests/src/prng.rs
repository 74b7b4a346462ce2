//! [`Prng`]: a small seeded random generator (no `rand` dependency).

/// A small deterministic random generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// Seeded with `seed`, silently.
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    /// Seeded with `seed`, or with `ADVISORY_TEST_SEED` when that is set
    /// (to replay a failure); prints the seed it uses.
    pub fn seeded(what: &str, seed: u64) -> Prng {
        let seed = std::env::var("ADVISORY_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        println!("{what}: PRNG seed {seed} (set ADVISORY_TEST_SEED to replay)");
        Prng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}
