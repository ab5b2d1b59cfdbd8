// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The command line's text form of one direction's limits.
//!
//! `bandwidth=SIZE/REFILL_MS[+BURST],ops=SIZE/REFILL_MS[+BURST]`, either part
//! optional but not both: SIZE tokens (bytes for `bandwidth`, packets for `ops`) every
//! REFILL_MS milliseconds, with BURST one-time extra tokens; `none` for no limit.
//! `bandwidth=2500000/100` is 25 MB/s, 200 Mbit/s; `ops=1000/100` is 10 kpps.

use super::{BucketConfig, LimitConfig, RateLimitError};

/// Text that is not a limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitSpecError {
    /// Neither bucket named.
    #[error(
        "empty: give bandwidth=SIZE/REFILL_MS[+BURST] and/or ops=SIZE/REFILL_MS[+BURST], or none"
    )]
    Empty,
    /// A part that is not `bandwidth=...` or `ops=...`.
    #[error("{0:?} is not bandwidth=... or ops=...")]
    UnknownPart(String),
    /// The same bucket twice.
    #[error("{0} given twice")]
    Twice(&'static str),
    /// A bucket not of the form SIZE/REFILL_MS[+BURST].
    #[error("{what}={value:?}: expected SIZE/REFILL_MS[+BURST], whole non-negative numbers")]
    Shape {
        /// `bandwidth` or `ops`.
        what: &'static str,
        /// What was given.
        value: String,
    },
    /// A bucket out of range.
    #[error("{0}")]
    Range(RateLimitError),
}

fn number(s: &str) -> Option<u64> {
    // `u64::from_str` takes a leading '+': a number here is digits only.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn bucket(what: &'static str, value: &str) -> Result<BucketConfig, LimitSpecError> {
    let shape = || LimitSpecError::Shape {
        what,
        value: value.to_string(),
    };
    let (size, rest) = value.split_once('/').ok_or_else(shape)?;
    let (refill, burst) = match rest.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (rest, None),
    };
    let b = BucketConfig {
        size: number(size).ok_or_else(shape)?,
        refill_time_ms: number(refill).ok_or_else(shape)?,
        one_time_burst: match burst {
            Some(b) => number(b).ok_or_else(shape)?,
            None => 0,
        },
    };
    b.validate(what).map_err(LimitSpecError::Range)?;
    Ok(b)
}

impl LimitConfig {
    /// Parse the text form (see the module doc).
    pub fn parse(s: &str) -> Result<LimitConfig, LimitSpecError> {
        let s = s.trim();
        if s == "none" {
            return Ok(LimitConfig::default());
        }
        let mut l = LimitConfig::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| LimitSpecError::UnknownPart(part.to_string()))?;
            let (slot, what) = match key.trim() {
                "bandwidth" => (&mut l.bandwidth, "bandwidth"),
                "ops" => (&mut l.ops, "ops"),
                _ => return Err(LimitSpecError::UnknownPart(part.to_string())),
            };
            if slot.is_some() {
                return Err(LimitSpecError::Twice(what));
            }
            *slot = Some(bucket(what, value.trim())?);
        }
        if !l.is_limited() {
            return Err(LimitSpecError::Empty);
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_buckets_with_and_without_a_burst() {
        let l = LimitConfig::parse("bandwidth=2500000/100, ops=1000/100+50").unwrap();
        assert_eq!(
            l.bandwidth,
            Some(BucketConfig {
                size: 2_500_000,
                one_time_burst: 0,
                refill_time_ms: 100
            })
        );
        assert_eq!(
            l.ops,
            Some(BucketConfig {
                size: 1000,
                one_time_burst: 50,
                refill_time_ms: 100
            })
        );
        assert_eq!(LimitConfig::parse("ops=1/1").unwrap().bandwidth, None);
        assert_eq!(LimitConfig::parse("none"), Ok(LimitConfig::default()));
    }

    #[test]
    fn bad_text_says_what_is_wrong() {
        use LimitSpecError as E;
        assert_eq!(LimitConfig::parse(""), Err(E::Empty));
        assert!(matches!(
            LimitConfig::parse("speed=1/1"),
            Err(E::UnknownPart(_))
        ));
        assert!(matches!(LimitConfig::parse("ops"), Err(E::UnknownPart(_))));
        assert_eq!(LimitConfig::parse("ops=1/1,ops=2/2"), Err(E::Twice("ops")));
        for bad in [
            "-5/100", "5/-100", "5", "5/", "/100", "5/100+", "5/100+-1", "+5/100", "1e3/100",
        ] {
            assert!(
                matches!(
                    LimitConfig::parse(&format!("bandwidth={bad}")),
                    Err(E::Shape { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            LimitConfig::parse("bandwidth=99999999999999999999/100"),
            Err(E::Shape { .. })
        ));
        // Ranges: no empty bucket, no refill of 0 or beyond an hour.
        for bad in ["0/100", "5/0", "5/3600001"] {
            assert!(
                matches!(LimitConfig::parse(&format!("ops={bad}")), Err(E::Range(_))),
                "{bad}"
            );
        }
        let e = LimitConfig::parse("ops=5/0").unwrap_err().to_string();
        assert!(e.contains("refill_time_ms") && e.contains("ops"), "{e}");
    }
}
