// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Per-queue-pair rate limits: what an operator sets (command line, config file, API
//! socket) and where the queue workers find it.
//!
//! A limit is a pair of token buckets per direction, one for bytes ("bandwidth") and
//! one for packets ("ops"), with Firecracker's RateLimiter semantics: a bucket holds
//! `size` tokens and refills completely in `refill_time_ms`, and `one_time_burst`
//! extra tokens are spent first and never refilled.
//!
//! [`RateLimits`] is the one shared store: the control side replaces a pair's limits
//! with [`RateLimits::set`], which bumps that pair's generation; the pair's worker
//! compares the generation on its way round and rebuilds its buckets when it moved,
//! so a change takes effect without a reconnect.

mod bucket;
mod gate;
mod spec;

pub use bucket::{Limiter, TokenBucket};
pub use gate::{Gate, Unlimited};
pub use spec::LimitSpecError;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Longest refill time accepted (one hour): longer ones are a typo, not a limit.
pub const MAX_REFILL_TIME_MS: u64 = 3_600_000;

/// One token bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full (bytes or packets).
    pub size: u64,
    /// Extra tokens available once, spent before the bucket's own.
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds the bucket takes to refill from empty to `size`.
    pub refill_time_ms: u64,
}

/// The limits of one direction of one queue pair: none set means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BucketConfig>,
    /// Packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<BucketConfig>,
}

/// Both directions of one queue pair. TX is guest -> uplink, RX uplink -> guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairLimits {
    /// Guest to uplink.
    #[serde(default)]
    pub tx: LimitConfig,
    /// Uplink to guest.
    #[serde(default)]
    pub rx: LimitConfig,
}

/// A limit that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateLimitError {
    /// No such queue pair.
    #[error("queue pair {pair} does not exist (this backend has {pairs})")]
    NoSuchPair {
        /// The pair asked for.
        pair: usize,
        /// How many there are.
        pairs: usize,
    },
    /// A bucket setting out of range.
    #[error("{what}: {why}")]
    Invalid {
        /// Which bucket (`tx.bandwidth`, ...).
        what: String,
        /// What is wrong with it.
        why: String,
    },
}

impl BucketConfig {
    /// Check the ranges; `what` names the bucket in the error.
    pub fn validate(&self, what: &str) -> Result<(), RateLimitError> {
        let bad = |why: &str| RateLimitError::Invalid {
            what: what.to_string(),
            why: why.to_string(),
        };
        if self.size == 0 {
            return Err(bad("size must be at least 1"));
        }
        if self.refill_time_ms == 0 || self.refill_time_ms > MAX_REFILL_TIME_MS {
            return Err(bad("refill_time_ms must be between 1 and 3600000"));
        }
        if self.size.checked_add(self.one_time_burst).is_none() {
            return Err(bad("size + one_time_burst overflows"));
        }
        Ok(())
    }
}

impl LimitConfig {
    fn validate(&self, dir: &str) -> Result<(), RateLimitError> {
        if let Some(b) = &self.bandwidth {
            b.validate(&format!("{dir}.bandwidth"))?;
        }
        if let Some(b) = &self.ops {
            b.validate(&format!("{dir}.ops"))?;
        }
        Ok(())
    }

    /// Whether any bucket is set.
    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }
}

impl PairLimits {
    /// Check every bucket.
    pub fn validate(&self) -> Result<(), RateLimitError> {
        self.tx.validate("tx")?;
        self.rx.validate("rx")
    }
}

/// The limits of every queue pair, shared by the control side and the workers.
#[derive(Debug)]
pub struct RateLimits {
    pairs: Vec<Mutex<PairLimits>>,
    generations: Vec<AtomicU64>,
}

impl RateLimits {
    /// `pairs` queue pairs, each starting with `initial`.
    pub fn new(pairs: usize, initial: PairLimits) -> Self {
        RateLimits {
            pairs: (0..pairs).map(|_| Mutex::new(initial)).collect(),
            generations: (0..pairs).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many queue pairs.
    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    fn slot(&self, pair: usize) -> Result<&Mutex<PairLimits>, RateLimitError> {
        self.pairs.get(pair).ok_or(RateLimitError::NoSuchPair {
            pair,
            pairs: self.pairs.len(),
        })
    }

    /// Pair `pair`'s limits.
    pub fn get(&self, pair: usize) -> Result<PairLimits, RateLimitError> {
        Ok(*self.slot(pair)?.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replace pair `pair`'s limits (checked first; nothing changes on an error).
    pub fn set(&self, pair: usize, limits: PairLimits) -> Result<(), RateLimitError> {
        limits.validate()?;
        let slot = self.slot(pair)?;
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = limits;
        self.generations[pair].fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Pair `pair`'s generation: it moves on every [`set`](Self::set). A worker reads
    /// it each round (one relaxed load) and calls [`get`](Self::get) when it moved.
    pub fn generation(&self, pair: usize) -> u64 {
        self.generations
            .get(pair)
            .map_or(0, |g| g.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, refill_time_ms: u64) -> BucketConfig {
        BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        }
    }

    #[test]
    fn set_checks_and_bumps_the_generation() {
        let l = RateLimits::new(2, PairLimits::default());
        assert_eq!(l.generation(1), 0);
        let mut p = PairLimits::default();
        p.rx.bandwidth = Some(bucket(1000, 100));
        l.set(1, p).unwrap();
        assert_eq!(l.generation(1), 1);
        assert_eq!(l.generation(0), 0);
        assert_eq!(l.get(1).unwrap(), p);
        p.tx.ops = Some(bucket(0, 100));
        assert!(matches!(l.set(1, p), Err(RateLimitError::Invalid { .. })));
        assert_eq!(l.generation(1), 1, "a refused limit changes nothing");
        assert_eq!(
            l.set(2, PairLimits::default()),
            Err(RateLimitError::NoSuchPair { pair: 2, pairs: 2 })
        );
    }

    #[test]
    fn json_is_firecracker_shaped_and_strict() {
        let p: PairLimits = serde_json::from_str(
            r#"{"tx": {"bandwidth": {"size": 125000, "refill_time_ms": 100}},
                "rx": {"ops": {"size": 1000, "one_time_burst": 50, "refill_time_ms": 100}}}"#,
        )
        .unwrap();
        assert_eq!(p.tx.bandwidth, Some(bucket(125000, 100)));
        assert_eq!(p.rx.ops.unwrap().one_time_burst, 50);
        assert!(serde_json::from_str::<PairLimits>(r#"{"tx": {"bandwith": {}}}"#).is_err());
        assert!(bucket(1, MAX_REFILL_TIME_MS + 1).validate("x").is_err());
    }
}
