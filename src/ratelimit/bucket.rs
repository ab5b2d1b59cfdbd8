// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A token bucket, and the [`Limiter`] of one direction of a queue pair.
//!
//! A [`TokenBucket`] holds up to `size` tokens and gains `size` of them every
//! `refill_time_ms`, computed from a monotonic clock the caller passes in (nanoseconds
//! since any fixed origin) in integer arithmetic: the part of a token earned but not
//! yet whole is kept, so refilling often or rarely gives the same tokens. Its
//! `one_time_burst` tokens are spent first and never come back. A full bucket starts
//! with its burst.
//!
//! A request larger than the bucket could ever hold (a 64 KiB packet through a 1500-byte
//! bucket) must still pass: it waits until the bucket is full, then takes all of it and
//! the rest becomes debt, paid off by the refill before the bucket holds a token again.
//! Over time the rate is the configured one, whatever the packet sizes. RX uses the same
//! debt: the size of a packet is known only once it has been read, so reading waits for
//! a bucket with any token at all ([`Limiter::ready`]) and the packet is then charged in
//! full ([`Limiter::charge`]).
//!
//! A bucket whose settings change is made anew, full; one whose settings did not
//! change keeps its tokens and debt ([`Limiter::reconfigure`]).

use super::{BucketConfig, LimitConfig};

/// Nanoseconds in a millisecond.
const NS_PER_MS: u128 = 1_000_000;

/// One token bucket (bytes or packets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    config: BucketConfig,
    /// Tokens held; negative: debt.
    level: i128,
    /// One-time burst tokens left.
    burst: u64,
    /// The clock reading the level was last brought up to.
    last_ns: u64,
    /// Part of a token earned since then, in units of `1 / refill_ns` token.
    rem: u128,
}

impl TokenBucket {
    /// A full bucket with its burst, at clock reading `now_ns`.
    pub fn new(config: BucketConfig, now_ns: u64) -> Self {
        TokenBucket {
            config,
            level: i128::from(config.size),
            burst: config.one_time_burst,
            last_ns: now_ns,
            rem: 0,
        }
    }

    /// Its settings.
    pub fn config(&self) -> BucketConfig {
        self.config
    }

    fn refill_ns(&self) -> u128 {
        u128::from(self.config.refill_time_ms) * NS_PER_MS
    }

    fn size(&self) -> i128 {
        i128::from(self.config.size)
    }

    /// Tokens held now (negative: debt), the burst not included.
    pub fn level(&self) -> i128 {
        self.level
    }

    /// One-time burst tokens left.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Add the tokens earned up to `now_ns` (a clock reading before the last one adds
    /// nothing).
    pub fn refill(&mut self, now_ns: u64) {
        let Some(elapsed) = now_ns.checked_sub(self.last_ns) else {
            return;
        };
        self.last_ns = now_ns;
        if self.level >= self.size() {
            self.rem = 0;
            return;
        }
        let earned = u128::from(elapsed) * u128::from(self.config.size) + self.rem;
        let refill_ns = self.refill_ns();
        let whole = earned / refill_ns;
        self.rem = earned % refill_ns;
        // `whole` fits an i128: elapsed and size are both u64.
        let whole = i128::try_from(whole).unwrap_or(i128::MAX);
        self.level = self.level.saturating_add(whole);
        if self.level >= self.size() {
            self.level = self.size();
            self.rem = 0;
        }
    }

    /// The level `n` tokens need before they may be taken: enough with the burst, or
    /// a full bucket for a request larger than it.
    fn needed(&self, n: u64) -> i128 {
        i128::from(n.saturating_sub(self.burst)).min(self.size())
    }

    /// Nanoseconds until the level reaches `target` at the refill rate (0: it has).
    fn ns_until(&self, target: i128) -> u64 {
        let Ok(missing) = u128::try_from(target - self.level) else {
            return 0;
        };
        if missing == 0 {
            return 0;
        }
        // Units of 1 / refill_ns token still to earn, counting the part already earned.
        let units = (missing * self.refill_ns()).saturating_sub(self.rem);
        let size = u128::from(self.config.size);
        u64::try_from(units.div_ceil(size)).unwrap_or(u64::MAX)
    }

    /// Whether `n` tokens can be taken now (after [`refill`](Self::refill)): `Ok`, or
    /// `Err` with the nanoseconds until they can.
    pub fn check(&self, n: u64) -> Result<(), u64> {
        match self.ns_until(self.needed(n)) {
            0 => Ok(()),
            ns => Err(ns),
        }
    }

    /// Take `n` tokens whatever is there, the burst first; what the bucket lacks
    /// becomes debt.
    pub fn take(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        self.level = self.level.saturating_sub(i128::from(n - from_burst));
    }

    /// Refill to `now_ns`, then take `n` tokens if they can be taken: `Ok` if they
    /// were, else `Err` with the nanoseconds until they can be (nothing taken).
    pub fn reduce(&mut self, n: u64, now_ns: u64) -> Result<(), u64> {
        self.refill(now_ns);
        self.check(n)?;
        self.take(n);
        Ok(())
    }

    /// Nanoseconds until the bucket holds at least one token (0: it does now; the
    /// burst counts).
    pub fn ns_until_positive(&self) -> u64 {
        if self.burst > 0 {
            0
        } else {
            self.ns_until(1)
        }
    }
}

/// The buckets of one direction of a queue pair: bytes, packets, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limiter {
    bytes: Option<TokenBucket>,
    packets: Option<TokenBucket>,
}

/// Rebuild `b` for `want` unless its settings are already those.
fn rebucket(b: &mut Option<TokenBucket>, want: Option<BucketConfig>, now_ns: u64) {
    if b.as_ref().map(TokenBucket::config) != want {
        *b = want.map(|c| TokenBucket::new(c, now_ns));
    }
}

impl Limiter {
    /// A limiter for `config`, its buckets full; `None` when `config` limits nothing.
    pub fn new(config: &LimitConfig, now_ns: u64) -> Option<Self> {
        config.is_limited().then(|| Limiter {
            bytes: config.bandwidth.map(|c| TokenBucket::new(c, now_ns)),
            packets: config.ops.map(|c| TokenBucket::new(c, now_ns)),
        })
    }

    /// Follow a change of settings: a bucket whose settings changed starts anew (full),
    /// the others keep their tokens and debt. `None` when nothing is limited any more.
    pub fn reconfigure(this: Option<Self>, config: &LimitConfig, now_ns: u64) -> Option<Self> {
        match this {
            None => Limiter::new(config, now_ns),
            Some(_) if !config.is_limited() => None,
            Some(mut l) => {
                rebucket(&mut l.bytes, config.bandwidth, now_ns);
                rebucket(&mut l.packets, config.ops, now_ns);
                Some(l)
            }
        }
    }

    /// The bytes bucket.
    pub fn bytes(&self) -> Option<&TokenBucket> {
        self.bytes.as_ref()
    }

    /// The packets bucket.
    pub fn packets(&self) -> Option<&TokenBucket> {
        self.packets.as_ref()
    }

    /// Bring both buckets up to `now_ns` (once per batch).
    pub fn refill(&mut self, now_ns: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.refill(now_ns);
        }
        if let Some(b) = self.packets.as_mut() {
            b.refill(now_ns);
        }
    }

    /// Take one packet of `bytes` bytes if both buckets allow it (after
    /// [`refill`](Self::refill)): `Ok`, or `Err` with the nanoseconds until they will
    /// (nothing taken).
    pub fn admit(&mut self, bytes: u64) -> Result<(), u64> {
        self.check(bytes)?;
        self.charge(bytes);
        Ok(())
    }

    /// Whether both buckets allow one packet of `bytes` bytes (after
    /// [`refill`](Self::refill)), taking nothing: `Err` with the nanoseconds until
    /// they will.
    pub fn check(&self, bytes: u64) -> Result<(), u64> {
        let wait_bytes = self.bytes.as_ref().map_or(Ok(()), |b| b.check(bytes));
        let wait_packets = self.packets.as_ref().map_or(Ok(()), |b| b.check(1));
        match (wait_bytes, wait_packets) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(a), _) | (_, Err(a)) => Err(a),
        }
    }

    /// Whether a packet of a size not known yet may be read (after
    /// [`refill`](Self::refill)): both buckets hold a token. `Err`: nanoseconds until
    /// they do.
    pub fn ready(&self) -> Result<(), u64> {
        let a = self
            .bytes
            .as_ref()
            .map_or(0, TokenBucket::ns_until_positive);
        let b = self
            .packets
            .as_ref()
            .map_or(0, TokenBucket::ns_until_positive);
        match a.max(b) {
            0 => Ok(()),
            ns => Err(ns),
        }
    }

    /// Charge one packet of `bytes` bytes, into debt if need be.
    pub fn charge(&mut self, bytes: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.take(bytes);
        }
        if let Some(b) = self.packets.as_mut() {
            b.take(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn cfg(size: u64, one_time_burst: u64, refill_time_ms: u64) -> BucketConfig {
        BucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        }
    }

    #[test]
    fn a_full_bucket_gives_its_size_then_refills_at_its_rate() {
        let mut b = TokenBucket::new(cfg(100, 0, 100), 0);
        for _ in 0..100 {
            b.reduce(1, 0).unwrap();
        }
        // Empty: one token comes every 1 ms (100 per 100 ms).
        assert_eq!(b.reduce(1, 0), Err(MS));
        assert_eq!(b.reduce(1, MS - 1), Err(1), "a token is not whole early");
        assert_eq!(b.reduce(1, MS), Ok(()));
        // 50 ms later: 50 tokens, not 51.
        assert_eq!(b.reduce(50, 51 * MS), Ok(()));
        assert_eq!(b.reduce(1, 51 * MS), Err(MS));
        // Never more than the size, however long it rests.
        b.refill(10_000 * MS);
        assert_eq!(b.level(), 100);
        assert!(b.reduce(101, 10_000 * MS).is_ok(), "oversized, full");
    }

    #[test]
    fn refilling_often_loses_nothing_to_rounding() {
        // 3 tokens per 7 ms: a third of a token and odd ns every step.
        let mut often = TokenBucket::new(cfg(3, 0, 7), 0);
        let mut once = often.clone();
        often.take(3);
        once.take(3);
        let mut t = 0;
        for _ in 0..7000 {
            t += 333;
            often.refill(t);
        }
        once.refill(t);
        assert_eq!(often.level(), once.level());
        assert_eq!(often.rem, once.rem);
        // 7000 * 333 ns = 2.331 ms: 3 * 2.331 / 7 = 0.999 tokens, not yet one.
        assert_eq!(often.level(), 0);
        // 7000 units of 7e6 missing, 3 units per ns.
        assert_eq!(often.check(1), Err(2334));
    }

    #[test]
    fn the_burst_goes_first_and_never_comes_back() {
        let mut b = TokenBucket::new(cfg(10, 25, 100), 0);
        assert_eq!(b.reduce(20, 0), Ok(()));
        assert_eq!((b.burst(), b.level()), (5, 10));
        // Burst and bucket together.
        assert_eq!(b.reduce(12, 0), Ok(()));
        assert_eq!((b.burst(), b.level()), (0, 3));
        b.refill(1_000 * MS);
        assert_eq!((b.burst(), b.level()), (0, 10), "the burst is not refilled");
        assert_eq!(
            b.reduce(11, 1_000 * MS),
            Ok(()),
            "full takes an oversized one"
        );
        assert_eq!(b.level(), -1);
    }

    #[test]
    fn exhaustion_says_how_long_to_wait_and_takes_nothing() {
        let mut b = TokenBucket::new(cfg(1000, 0, 1000), 0);
        assert_eq!(b.reduce(600, 0), Ok(()));
        // 400 left, 500 asked: 100 more at 1 per ms.
        assert_eq!(b.reduce(500, 0), Err(100 * MS));
        assert_eq!(b.level(), 400, "a refused request takes nothing");
        assert_eq!(b.reduce(500, 100 * MS), Ok(()));
    }

    #[test]
    fn a_packet_larger_than_the_bucket_waits_for_full_then_leaves_debt() {
        let mut b = TokenBucket::new(cfg(1500, 0, 10), 0);
        b.take(1);
        // 1 token short of full: 10 ms / 1500 per token.
        assert_eq!(b.reduce(9000, 0), Err(10 * MS / 1500 + 1));
        assert_eq!(b.reduce(9000, 10 * MS), Ok(()));
        assert_eq!(b.level(), 1500 - 9000);
        // The debt is paid first: the next byte waits 7501 tokens' time (50 ms for
        // 7500, the 9000 bytes' 60 ms in all).
        assert_eq!(b.reduce(1, 10 * MS), Err(50 * MS + 10 * MS / 1500 + 1));
        assert_eq!(b.ns_until_positive(), 50 * MS + 10 * MS / 1500 + 1);
        assert_eq!(b.reduce(1, 61 * MS), Ok(()));
    }

    #[test]
    fn a_clock_going_back_adds_nothing() {
        let mut b = TokenBucket::new(cfg(10, 0, 10), 50 * MS);
        b.take(10);
        b.refill(0);
        assert_eq!(b.level(), 0);
        b.refill(55 * MS);
        assert_eq!(b.level(), 5);
    }

    #[test]
    fn a_limiter_takes_from_both_buckets_or_from_neither() {
        let limits = LimitConfig {
            bandwidth: Some(cfg(3000, 0, 100)),
            ops: Some(cfg(2, 0, 100)),
        };
        let mut l = Limiter::new(&limits, 0).unwrap();
        assert_eq!(l.admit(1000), Ok(()));
        assert_eq!(l.admit(1000), Ok(()));
        // Packets ran out first (50 ms per packet); the bytes bucket is untouched.
        assert_eq!(l.admit(500), Err(50 * MS));
        assert_eq!(l.bytes().unwrap().level(), 1000);
        l.refill(50 * MS);
        // Bytes now short: 1000 + 1500 earned = 2500 held, 2600 asked.
        // 100 bytes at 30 per ms: 3.333334 ms.
        assert_eq!(l.admit(2600), Err(3_333_334));
        assert_eq!(l.packets().unwrap().level(), 1);
        assert_eq!(Limiter::new(&LimitConfig::default(), 0), None);
    }

    #[test]
    fn rx_reads_while_any_token_is_left_and_pays_the_rest_as_debt() {
        let limits = LimitConfig {
            bandwidth: Some(cfg(1000, 0, 1000)),
            ops: None,
        };
        let mut l = Limiter::new(&limits, 0).unwrap();
        l.charge(999);
        assert_eq!(l.ready(), Ok(()));
        l.charge(1500);
        assert_eq!(l.bytes().unwrap().level(), -1499);
        assert_eq!(l.ready(), Err(1500 * MS));
        l.refill(1500 * MS);
        assert_eq!(l.ready(), Ok(()));
    }

    #[test]
    fn a_change_at_run_time_rebuilds_only_the_bucket_that_changed() {
        let a = cfg(100, 0, 100);
        let mut limits = LimitConfig {
            bandwidth: Some(a),
            ops: Some(a),
        };
        let mut l = Limiter::new(&limits, 0).unwrap();
        l.charge(100);
        // Only the packets bucket changes: it starts full, the bytes one keeps its state.
        limits.ops = Some(cfg(10, 5, 100));
        let l = Limiter::reconfigure(Some(l), &limits, MS).unwrap();
        assert_eq!(
            l.bytes().unwrap().level(),
            0,
            "the bytes bucket kept its level"
        );
        assert_eq!(l.packets().unwrap().level(), 10);
        assert_eq!(l.packets().unwrap().burst(), 5);
        // The same settings again change nothing.
        let same = Limiter::reconfigure(Some(l.clone()), &limits, MS).unwrap();
        assert_eq!(same, l);
        // Removing every limit removes the limiter; adding one back makes a full one.
        assert_eq!(
            Limiter::reconfigure(Some(l), &LimitConfig::default(), MS),
            None
        );
        let back = Limiter::reconfigure(None, &limits, 2 * MS).unwrap();
        assert_eq!(back.bytes().unwrap().level(), 100);
    }
}
