//! Human durations for `wait = "…"`, parsed at compile time into whole
//! milliseconds.
//!
//! Grammar: one or more `<number> <unit>` parts, whitespace allowed around
//! and between them, e.g. `"30s"`, `"1m30s"`, `"1.5 s"`, `"2h 15m"`.
//! A number is `digits` or `digits.digits`; a unit is `ms`, `s`, `m` or `h`.
//! Every part must be a whole number of milliseconds, the sum must be greater
//! than zero and at most [`MAX_MILLIS`] (365 days).

use std::fmt;

/// The longest wait accepted: 365 days, in milliseconds.
pub const MAX_MILLIS: u64 = 365 * 24 * 3_600_000;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing but whitespace.
    Empty,
    /// A character where a number was expected.
    ExpectedNumber { found: String },
    /// `"5.s"`: a decimal point without digits after it.
    MissingFraction { number: String },
    /// `"30"`: a number without a unit.
    MissingUnit { number: String },
    /// `"30 secs"`.
    UnknownUnit { unit: String },
    /// `"0.5ms"`, `"0.0001s"`.
    SubMillisecond { part: String },
    /// The sum is zero.
    Zero,
    /// More than [`MAX_MILLIS`].
    TooLong,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: &str = "`ms`, `s`, `m` or `h`";
        match self {
            DurationError::Empty => {
                write!(f, "the duration is empty: write a number and a unit, e.g. \"30s\" or \"1m30s\"")
            }
            DurationError::ExpectedNumber { found } => write!(
                f,
                "expected a number at `{found}`: a duration is a number followed by a unit ({UNITS}), e.g. \"30s\" or \"1m30s\""
            ),
            DurationError::MissingFraction { number } => write!(
                f,
                "expected digits after the decimal point in `{number}`: write e.g. \"1.5s\""
            ),
            DurationError::MissingUnit { number } => write!(
                f,
                "missing unit after `{number}`: add one of {UNITS}, e.g. \"{number}s\""
            ),
            DurationError::UnknownUnit { unit } => {
                write!(f, "unknown duration unit `{unit}`: use {UNITS}")?;
                if let Some(hint) = unit_hint(unit) {
                    write!(f, " (did you mean `{hint}`?)")?;
                }
                Ok(())
            }
            DurationError::SubMillisecond { part } => write!(
                f,
                "`{part}` is not a whole number of milliseconds: waits are counted in milliseconds, sub-millisecond precision is not supported"
            ),
            DurationError::Zero => write!(
                f,
                "the duration is zero: give a positive wait, or use `skip` (the default) to skip the body when the lock is busy"
            ),
            DurationError::TooLong => write!(
                f,
                "the duration is too long: the longest wait is 8760h (365 days); write `wait` alone to wait without a limit"
            ),
        }
    }
}

fn unit_hint(unit: &str) -> Option<&'static str> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "msec" | "msecs" | "millis" | "milli" | "millisecond" | "milliseconds" => "ms",
        "sec" | "secs" | "second" | "seconds" => "s",
        "min" | "mins" | "minute" | "minutes" => "m",
        "hr" | "hrs" | "hour" | "hours" => "h",
        _ => return None,
    })
}

fn unit_millis(unit: &str) -> Option<u128> {
    Some(match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    })
}

/// Parses a human duration into whole milliseconds.
pub fn parse_millis(text: &str) -> Result<u64, DurationError> {
    if text.trim().is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = text.trim_start();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (millis, after) = parse_part(rest)?;
        total = total.checked_add(millis).ok_or(DurationError::TooLong)?;
        if total > u128::from(MAX_MILLIS) {
            return Err(DurationError::TooLong);
        }
        rest = after.trim_start();
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(total as u64)
}

/// One `<number> <unit>` part at the start of `text` (no leading
/// whitespace): its milliseconds and the text after it.
fn parse_part(text: &str) -> Result<(u128, &str), DurationError> {
    let int_len = text.bytes().take_while(u8::is_ascii_digit).count();
    if int_len == 0 {
        let found: String = text.split_whitespace().next().unwrap_or(text).to_string();
        return Err(DurationError::ExpectedNumber { found });
    }
    let int_digits = &text[..int_len];
    let mut rest = &text[int_len..];

    let mut frac_digits = "";
    if let Some(after_dot) = rest.strip_prefix('.') {
        let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        if frac_len == 0 {
            return Err(DurationError::MissingFraction {
                number: format!("{int_digits}."),
            });
        }
        frac_digits = &after_dot[..frac_len];
        rest = &after_dot[frac_len..];
    }
    let number = &text[..text.len() - rest.len()];

    rest = rest.trim_start();
    let unit_len: usize = rest
        .chars()
        .take_while(|c| c.is_alphabetic() || *c == 'µ')
        .map(char::len_utf8)
        .sum();
    if unit_len == 0 {
        return Err(DurationError::MissingUnit {
            number: number.to_string(),
        });
    }
    let unit = &rest[..unit_len];
    rest = &rest[unit_len..];
    let factor = unit_millis(unit).ok_or_else(|| DurationError::UnknownUnit {
        unit: unit.to_string(),
    })?;
    let part = &text[..text.len() - rest.len()];
    let millis = part_millis(int_digits, frac_digits, factor, part)?;
    Ok((millis, rest))
}

/// `(int + frac / 10^k) * factor` milliseconds, which must be a whole number.
fn part_millis(int: &str, frac: &str, factor: u128, part: &str) -> Result<u128, DurationError> {
    let sub_millisecond = || DurationError::SubMillisecond {
        part: part.to_string(),
    };
    let frac = frac.trim_end_matches('0');
    let int: u128 = digits_value(int).ok_or(DurationError::TooLong)?;
    let int_ms = int.checked_mul(factor).ok_or(DurationError::TooLong)?;
    if frac.is_empty() {
        return Ok(int_ms);
    }
    // `factor` has at most five factors of ten (3_600_000 = 2^7 3^2 5^5),
    // so longer fractions can never be whole milliseconds.
    if frac.len() > 6 {
        return Err(sub_millisecond());
    }
    let scale = 10u128.pow(frac.len() as u32);
    let numerator = digits_value(frac).ok_or_else(sub_millisecond)? * factor;
    if !numerator.is_multiple_of(scale) {
        return Err(sub_millisecond());
    }
    int_ms
        .checked_add(numerator / scale)
        .ok_or(DurationError::TooLong)
}

fn digits_value(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |acc, d| {
        acc.checked_mul(10)?.checked_add(u128::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u64 {
        parse_millis(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> DurationError {
        parse_millis(text).expect_err(text)
    }

    #[test]
    fn single_units() {
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("30s"), 30_000);
        assert_eq!(ms("2m"), 120_000);
        assert_eq!(ms("1h"), 3_600_000);
    }

    #[test]
    fn decimals() {
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms("0.25m"), 15_000);
        assert_eq!(ms("0.001s"), 1);
        assert_eq!(ms("1.000000000s"), 1_000);
        assert_eq!(ms("0.5h"), 1_800_000);
    }

    #[test]
    fn combinations_and_whitespace() {
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("1h 2m 3s 4ms"), 3_723_004);
        assert_eq!(ms(" 30 s "), 30_000);
        assert_eq!(ms("1m 0.5s"), 60_500);
    }

    #[test]
    fn limits() {
        assert_eq!(ms("8760h"), MAX_MILLIS);
        assert_eq!(err("8760h1ms"), DurationError::TooLong);
        assert_eq!(
            err("99999999999999999999999999999999999999999h"),
            DurationError::TooLong
        );
        assert_eq!(
            err("340282366920938463463374607431768211455ms"),
            DurationError::TooLong
        );
        assert_eq!(err("0s"), DurationError::Zero);
        assert_eq!(err("0ms 0.000s"), DurationError::Zero);
    }

    #[test]
    fn sub_millisecond() {
        assert_eq!(
            err("0.5ms"),
            DurationError::SubMillisecond {
                part: "0.5ms".into()
            }
        );
        assert_eq!(
            err("1s 0.0001s"),
            DurationError::SubMillisecond {
                part: "0.0001s".into()
            }
        );
        assert!(matches!(
            err("0.3333333333s"),
            DurationError::SubMillisecond { .. }
        ));
    }

    #[test]
    fn malformed() {
        assert_eq!(err(""), DurationError::Empty);
        assert_eq!(err("   "), DurationError::Empty);
        assert_eq!(
            err("30"),
            DurationError::MissingUnit {
                number: "30".into()
            }
        );
        assert_eq!(
            err("30 secs"),
            DurationError::UnknownUnit {
                unit: "secs".into()
            }
        );
        assert_eq!(err("1d"), DurationError::UnknownUnit { unit: "d".into() });
        assert_eq!(
            err("s"),
            DurationError::ExpectedNumber { found: "s".into() }
        );
        assert_eq!(
            err(".5s"),
            DurationError::ExpectedNumber {
                found: ".5s".into()
            }
        );
        assert_eq!(
            err("5.s"),
            DurationError::MissingFraction {
                number: "5.".into()
            }
        );
        assert_eq!(
            err("-5s"),
            DurationError::ExpectedNumber {
                found: "-5s".into()
            }
        );
        assert_eq!(
            err("1m,30s"),
            DurationError::ExpectedNumber {
                found: ",30s".into()
            }
        );
    }

    #[test]
    fn messages() {
        assert_eq!(
            err("30 secs").to_string(),
            "unknown duration unit `secs`: use `ms`, `s`, `m` or `h` (did you mean `s`?)"
        );
        assert_eq!(
            err("30").to_string(),
            "missing unit after `30`: add one of `ms`, `s`, `m` or `h`, e.g. \"30s\""
        );
    }
}
