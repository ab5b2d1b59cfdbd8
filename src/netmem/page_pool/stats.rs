// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Page pool statistics (Linux: `struct page_pool_stats`, `page_pool_get_stats`).
//!
//! [`PagePoolStats`] is a snapshot with the kernel's counter names. The live counters
//! sit apart from the pool, in two groups on their own cache lines: those only the
//! owner writes (the alloc side and direct recycling, single-writer [`Counter`]s) and
//! those any returning thread bumps (ring recycling, atomics). A
//! [`PagePoolStatsReader`] shares only the counters, so a stats writer keeps neither
//! the pool nor its memory alive. [`PagePool::stats`] and [`PagePool::stats_reader`]
//! are defined here too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::PagePool;
use crate::metrics::{Counter, CounterGroup};

/// Page pool counters, with the kernel's names (ethtool `rx_pp_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PagePoolStats {
    /// Allocations served from the alloc cache (`rx_pp_alloc_fast`).
    pub alloc_fast: u64,
    /// Allocations that refilled the cache from the memory provider (`rx_pp_alloc_slow`).
    pub alloc_slow: u64,
    /// High-order allocations (`rx_pp_alloc_slow_ho`); always 0: the pool hands out
    /// single chunks.
    pub alloc_slow_high_order: u64,
    /// Refills that found the recycle ring empty (`rx_pp_alloc_empty`).
    pub alloc_empty: u64,
    /// Allocations that refilled the cache from the recycle ring (`rx_pp_alloc_refill`).
    pub alloc_refill: u64,
    /// Netmems taken off the ring and released because their memory is not on the
    /// pool's preferred NUMA node (`rx_pp_alloc_waive`).
    pub alloc_waive: u64,
    /// Returns placed in the alloc cache (`rx_pp_recycle_cached`).
    pub recycle_cached: u64,
    /// Direct returns that found the alloc cache full (`rx_pp_recycle_cache_full`).
    pub recycle_cache_full: u64,
    /// Returns placed in the recycle ring (`rx_pp_recycle_ring`).
    pub recycle_ring: u64,
    /// Returns that found the ring full and went back to the provider
    /// (`rx_pp_recycle_ring_full`).
    pub recycle_ring_full: u64,
    /// Returns released to the provider because the memory is still referenced outside
    /// the pool (`rx_pp_recycle_released_ref`).
    pub recycle_released_ref: u64,
}

impl PagePoolStats {
    /// Every counter with its name (the kernel's, without the ethtool `rx_pp_`
    /// prefix), in the order of the struct.
    pub fn fields(&self) -> [(&'static str, u64); 11] {
        [
            ("alloc_fast", self.alloc_fast),
            ("alloc_slow", self.alloc_slow),
            ("alloc_slow_high_order", self.alloc_slow_high_order),
            ("alloc_empty", self.alloc_empty),
            ("alloc_refill", self.alloc_refill),
            ("alloc_waive", self.alloc_waive),
            ("recycle_cached", self.recycle_cached),
            ("recycle_cache_full", self.recycle_cache_full),
            ("recycle_ring", self.recycle_ring),
            ("recycle_ring_full", self.recycle_ring_full),
            ("recycle_released_ref", self.recycle_released_ref),
        ]
    }

    /// Field-wise sum (for an aggregate over queues).
    pub fn sum(&self, o: &PagePoolStats) -> PagePoolStats {
        PagePoolStats {
            alloc_fast: self.alloc_fast + o.alloc_fast,
            alloc_slow: self.alloc_slow + o.alloc_slow,
            alloc_slow_high_order: self.alloc_slow_high_order + o.alloc_slow_high_order,
            alloc_empty: self.alloc_empty + o.alloc_empty,
            alloc_refill: self.alloc_refill + o.alloc_refill,
            alloc_waive: self.alloc_waive + o.alloc_waive,
            recycle_cached: self.recycle_cached + o.recycle_cached,
            recycle_cache_full: self.recycle_cache_full + o.recycle_cache_full,
            recycle_ring: self.recycle_ring + o.recycle_ring,
            recycle_ring_full: self.recycle_ring_full + o.recycle_ring_full,
            recycle_released_ref: self.recycle_released_ref + o.recycle_released_ref,
        }
    }
}

/// Counters only the owner updates: single-writer [`Counter`]s, a relaxed load and
/// store each (no read-modify-write on the fast path), readable from any thread.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct AllocStats {
    pub(super) fast: Counter,
    pub(super) slow: Counter,
    pub(super) empty: Counter,
    pub(super) refill: Counter,
    pub(super) waive: Counter,
    pub(super) recycle_cached: Counter,
    pub(super) recycle_cache_full: Counter,
}

/// Counters any returning thread updates, on their own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct RecycleStats {
    pub(super) ring: AtomicU64,
    pub(super) ring_full: AtomicU64,
    pub(super) released_ref: AtomicU64,
}

/// All counters of one pool, apart from the pool itself so that a stats reader
/// (see [`PagePoolStatsReader`]) keeps neither the pool nor its memory alive.
#[derive(Debug, Default)]
pub(super) struct PoolCounters {
    pub(super) alloc: AllocStats,
    pub(super) recycle: RecycleStats,
}

impl PoolCounters {
    fn read(&self) -> PagePoolStats {
        let s = &self.alloc;
        let r = &self.recycle;
        PagePoolStats {
            alloc_fast: s.fast.get(),
            alloc_slow: s.slow.get(),
            alloc_slow_high_order: 0,
            alloc_empty: s.empty.get(),
            alloc_refill: s.refill.get(),
            alloc_waive: s.waive.get(),
            recycle_cached: s.recycle_cached.get(),
            recycle_cache_full: s.recycle_cache_full.get(),
            recycle_ring: r.ring.load(Ordering::Relaxed),
            recycle_ring_full: r.ring_full.load(Ordering::Relaxed),
            recycle_released_ref: r.released_ref.load(Ordering::Relaxed),
        }
    }
}

/// A handle that reads a pool's counters from any thread (Linux:
/// `page_pool_get_stats`), for a stats writer. It shares only the counters: the pool
/// may be destroyed meanwhile, and the reader then sees its final values.
#[derive(Clone, Debug)]
pub struct PagePoolStatsReader(Arc<PoolCounters>);

impl PagePoolStatsReader {
    /// A copy of the counters. Each is read whole, but not all at the same instant.
    pub fn read(&self) -> PagePoolStats {
        self.0.read()
    }
}

impl CounterGroup for PagePoolStatsReader {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        self.read().fields().to_vec()
    }
}

impl PagePool {
    /// A copy of the counters.
    pub fn stats(&self) -> PagePoolStats {
        self.counters.read()
    }

    /// A handle that reads this pool's counters from another thread.
    pub fn stats_reader(&self) -> PagePoolStatsReader {
        PagePoolStatsReader(Arc::clone(&self.counters))
    }
}
