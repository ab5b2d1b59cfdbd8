//! DOC: page_pool allocator
//!
//! A recycling allocator of netmems for one RX queue, after Linux's
//! `net/core/page_pool.c`. The queue's worker owns the [`PagePool`]; memory comes from a
//! [`MemoryProvider`] (host pages, hugetlb, an AF_XDP UMEM) and travels as [`NetmemRef`]
//! handles to chunks of the provider's [`NetIovArea`].
//!
//! Two tiers, hot to cold:
//! - the **alloc cache**: a LIFO array of [`PP_ALLOC_CACHE_SIZE`] netmems that only the
//!   owner touches (`&mut self`, the analogue of NAPI context; those methods end in
//!   `_direct`). Allocation pops from it and a direct put pushes onto it, with no atomic
//!   read-modify-write on either path;
//! - the **recycle ring**: a bounded lock-free queue (default [`PP_RING_SIZE_DEFAULT`])
//!   that other threads return netmems into through a [`PagePoolRecycler`]. When the
//!   cache is empty, the owner refills it from the ring, [`PP_ALLOC_CACHE_REFILL`] at a
//!   time, and only then asks the provider for a bulk of fresh netmems.
//!
//! A return that finds the cache full goes to the ring; one that finds the ring full goes
//! back to the provider (counted, never lost). A netmem still referenced outside the
//! pool (its descriptor carries `NETMEM_DESC_EXTERNAL_REF`) is not recycled but released
//! to the provider, which hands it out again only once that reference is gone.
//!
//! Fragments: [`PagePool::alloc_frag_direct`] carves one netmem into several frags. The
//! netmem's `pp_ref_count` is set to a large bias when it is first carved; every frag put
//! drops one reference, and when the pool moves on to the next netmem it drops the part
//! of the bias no frag took. Whoever drops the last reference recycles the netmem, so it
//! returns to the pool only once every frag was put.
//!
//! Accounting (Linux `pages_state_hold_cnt` / `pages_state_release_cnt`): `hold_cnt`
//! counts netmems the pool took from its provider, `release_cnt` those it gave back;
//! [`PagePool::inflight`] is their difference, the netmems the pool answers for (held by
//! users, or waiting in the cache or ring). [`PagePool::destroy`] gives the cache and the
//! ring back; if netmems are still out, the pool is parked (see [`parked_pools`]) and the
//! provider is destroyed only when the last one comes back.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_queue::ArrayQueue;
use serde::Serialize;

use crate::metrics::{Counter, CounterGroup};

use super::{
    MemoryProvider, NetIovArea, NetIovError, NetmemDesc, NetmemRef, NETMEM_DESC_EXTERNAL_REF,
};

/// Entries of the owner-only alloc cache (Linux: `PP_ALLOC_CACHE_SIZE`).
pub const PP_ALLOC_CACHE_SIZE: usize = 128;
/// Netmems moved into the alloc cache per refill (Linux: `PP_ALLOC_CACHE_REFILL`).
pub const PP_ALLOC_CACHE_REFILL: usize = 64;
/// Default capacity of the recycle ring.
pub const PP_RING_SIZE_DEFAULT: usize = 1024;
/// Frag sizes are rounded up to this (a cache line, like Linux's DMA cache alignment).
pub const PP_FRAG_ALIGN: u32 = 64;
/// References a netmem starts with when it is carved into frags (Linux: `BIAS_MAX`).
const BIAS_MAX: u32 = 1 << 30;

/// Errors of the page pool and its memory providers.
#[derive(Debug, thiserror::Error)]
pub enum PagePoolError {
    /// The recycle ring must hold at least one netmem.
    #[error("invalid page pool recycle ring size {0}: must be at least 1")]
    RingSize(usize),
    /// A provider serves one pool at a time.
    #[error("memory provider of net_iov area {area} already serves page pool {pool}")]
    ProviderInUse {
        /// The provider's area.
        area: u16,
        /// The pool it serves.
        pool: u32,
    },
    /// The provider's memory could not be set up.
    #[error("page pool memory: {0}")]
    Area(#[from] NetIovError),
}

/// Page pool parameters (Linux: `struct page_pool_params`).
#[derive(Clone, Debug)]
pub struct PagePoolParams {
    /// Capacity of the recycle ring (at least 1).
    pub ring_size: usize,
    /// Preferred NUMA node; `None` takes memory from any node.
    pub nid: Option<u32>,
}

impl Default for PagePoolParams {
    fn default() -> Self {
        PagePoolParams {
            ring_size: PP_RING_SIZE_DEFAULT,
            nid: None,
        }
    }
}

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
struct AllocStats {
    fast: Counter,
    slow: Counter,
    empty: Counter,
    refill: Counter,
    waive: Counter,
    recycle_cached: Counter,
    recycle_cache_full: Counter,
}

/// Counters any returning thread updates, on their own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct RecycleStats {
    ring: AtomicU64,
    ring_full: AtomicU64,
    released_ref: AtomicU64,
}

/// All counters of one pool, apart from the pool itself so that a stats reader
/// (see [`PagePoolStatsReader`]) keeps neither the pool nor its memory alive.
#[derive(Debug, Default)]
struct PoolCounters {
    alloc: AllocStats,
    recycle: RecycleStats,
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

/// The provider and whether it has been destroyed, under the pool's one lock.
struct ProviderSlot {
    provider: Box<dyn MemoryProvider>,
    destroyed: bool,
}

/// The part of a pool that returning threads share with the owner.
struct PoolShared {
    id: u32,
    area: Arc<NetIovArea>,
    ring: ArrayQueue<NetmemRef>,
    counters: Arc<PoolCounters>,
    /// Netmems taken from the provider (only the owner adds).
    hold_cnt: AtomicU64,
    /// Netmems given back to the provider.
    release_cnt: AtomicU64,
    /// The owner destroyed the pool: ring entries go to the provider from now on.
    destroyed: AtomicBool,
    /// The provider was destroyed (inflight reached 0 after `destroyed`).
    memory_released: AtomicBool,
    provider: Mutex<ProviderSlot>,
}

impl std::fmt::Debug for PoolShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolShared")
            .field("id", &self.id)
            .field("area", &self.area.id())
            .field("ring_len", &self.ring.len())
            .field("inflight", &self.inflight())
            .field("destroyed", &self.destroyed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Drop `nr` pool references on a netmem; true when they were the last (Linux:
/// `page_pool_unref_netmem` returning 0). The count is then left at 1, the state of a
/// netmem sitting in the pool, so a whole-netmem put costs a load, not an atomic update.
#[inline]
fn unref_netmem(desc: &NetmemDesc, nr: u32) -> bool {
    if desc.ref_count() == nr {
        if nr != 1 {
            desc.set_ref_count(1);
        }
        return true;
    }
    if desc.put_refs(nr) == 0 {
        desc.set_ref_count(1);
        return true;
    }
    false
}

#[inline]
fn externally_referenced(desc: &NetmemDesc) -> bool {
    desc.flags() & NETMEM_DESC_EXTERNAL_REF != 0
}

#[cold]
fn put_foreign(pool: u32, netmem: NetmemRef) {
    log::error!("{netmem:?} returned to page pool {pool}, which does not own it; ignored");
}

impl PoolShared {
    /// Descriptor of a netmem this pool owns.
    #[inline]
    fn desc(&self, netmem: NetmemRef) -> Option<&NetmemDesc> {
        let desc = self.area.desc(netmem)?;
        (desc.pool_id() == self.id).then_some(desc)
    }

    fn lock_provider(&self) -> MutexGuard<'_, ProviderSlot> {
        self.provider.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inflight(&self) -> u64 {
        let release = self.release_cnt.load(Ordering::Acquire);
        let hold = self.hold_cnt.load(Ordering::Acquire);
        hold.saturating_sub(release)
    }

    /// Give a netmem back to the provider (Linux: `page_pool_return_netmem`).
    fn release_locked(&self, slot: &mut ProviderSlot, netmem: NetmemRef) {
        if let Some(desc) = self.area.desc(netmem) {
            desc.set_pool_id(0);
            desc.set_ref_count(0);
        }
        slot.provider.release_netmem(netmem);
        self.release_cnt.fetch_add(1, Ordering::AcqRel);
        if self.destroyed.load(Ordering::Acquire) {
            self.finish_if_idle(slot);
        }
    }

    fn release_netmem(&self, netmem: NetmemRef) {
        let mut slot = self.lock_provider();
        self.release_locked(&mut slot, netmem);
    }

    /// A last reference dropped on a netmem something outside the pool still uses.
    #[cold]
    fn release_referenced(&self, netmem: NetmemRef) {
        self.counters
            .recycle
            .released_ref
            .fetch_add(1, Ordering::Relaxed);
        self.release_netmem(netmem);
    }

    /// Once destroyed and idle, destroy the provider; true when that is done.
    fn finish_if_idle(&self, slot: &mut ProviderSlot) -> bool {
        if slot.destroyed {
            return true;
        }
        if self.inflight() != 0 {
            return false;
        }
        slot.provider.destroy();
        slot.destroyed = true;
        self.memory_released.store(true, Ordering::Release);
        unpark(self.id);
        log::debug!("page pool {}: memory released", self.id);
        true
    }

    /// Put a netmem in the recycle ring, or back to the provider when the ring is full.
    fn recycle_in_ring(&self, netmem: NetmemRef) -> bool {
        match self.ring.push(netmem) {
            Ok(()) => {
                self.counters.recycle.ring.fetch_add(1, Ordering::Relaxed);
                // The push (a SeqCst read-modify-write of the ring's tail) and this load
                // pair with destroy's SeqCst store of `destroyed` followed by its drain of
                // the ring: either the owner's drain sees this entry, or we see
                // `destroyed` and drain it ourselves. Nothing stays in a dead pool's ring.
                if self.destroyed.load(Ordering::SeqCst) {
                    self.drain_ring_destroyed();
                }
                true
            }
            Err(netmem) => {
                self.counters
                    .recycle
                    .ring_full
                    .fetch_add(1, Ordering::Relaxed);
                self.release_netmem(netmem);
                false
            }
        }
    }

    #[cold]
    fn drain_ring_destroyed(&self) {
        let mut slot = self.lock_provider();
        while let Some(netmem) = self.ring.pop() {
            self.release_locked(&mut slot, netmem);
        }
    }

    /// Drop one reference from any thread (Linux: `page_pool_put_netmem` without
    /// direct recycling).
    fn put_netmem(&self, netmem: NetmemRef) -> bool {
        let Some(desc) = self.desc(netmem) else {
            put_foreign(self.id, netmem);
            return false;
        };
        if !unref_netmem(desc, 1) {
            return true;
        }
        if externally_referenced(desc) {
            self.release_referenced(netmem);
            return false;
        }
        self.recycle_in_ring(netmem)
    }
}

/// Pools destroyed while netmems were still in flight.
static PARKED: Mutex<Vec<Arc<PoolShared>>> = Mutex::new(Vec::new());

fn park(shared: &Arc<PoolShared>) {
    let mut parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
    parked.push(Arc::clone(shared));
}

fn unpark(id: u32) {
    let removed = {
        let mut parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        parked
            .iter()
            .position(|p| p.id == id)
            .map(|i| parked.swap_remove(i))
    };
    drop(removed);
}

/// Pools that were destroyed with netmems in flight and still keep their memory.
pub fn parked_pools() -> Vec<PagePoolParked> {
    let parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
    parked
        .iter()
        .map(|p| PagePoolParked(Arc::clone(p)))
        .collect()
}

/// A destroyed pool waiting for its netmems to come back.
#[derive(Clone, Debug)]
pub struct PagePoolParked(Arc<PoolShared>);

impl PagePoolParked {
    /// The pool's id.
    pub fn id(&self) -> u32 {
        self.0.id
    }

    /// Netmems still out.
    pub fn inflight(&self) -> u64 {
        self.0.inflight()
    }

    /// Whether every netmem came back and the provider's memory was released.
    pub fn is_released(&self) -> bool {
        self.0.memory_released.load(Ordering::Acquire)
    }
}

/// What [`PagePool::destroy`] did.
#[must_use]
#[derive(Debug)]
pub enum PagePoolDestroy {
    /// Nothing was in flight: the provider was destroyed.
    Released,
    /// Netmems are still out: the pool is parked and keeps its memory until the last
    /// one is returned through a [`PagePoolRecycler`].
    Parked(PagePoolParked),
}

/// A handle for returning netmems to a pool from any thread.
#[derive(Clone, Debug)]
pub struct PagePoolRecycler {
    shared: Arc<PoolShared>,
}

impl PagePoolRecycler {
    /// Drop one reference to `netmem` (a whole netmem or one of its frags). When it was
    /// the last, the netmem goes into the recycle ring; returns false when it went back
    /// to the provider instead (ring full: `recycle_ring_full`; still referenced outside
    /// the pool: `recycle_released_ref`) or is not this pool's.
    pub fn recycle(&self, netmem: NetmemRef) -> bool {
        self.shared.put_netmem(netmem)
    }

    /// The pool's id.
    pub fn pool_id(&self) -> u32 {
        self.shared.id
    }

    /// The pool's inflight count (see [`PagePool::inflight`]).
    pub fn inflight(&self) -> u64 {
        self.shared.inflight()
    }

    /// Netmems waiting in the recycle ring.
    pub fn ring_len(&self) -> usize {
        self.shared.ring.len()
    }
}

/// The frag being carved (Linux: `frag_page`, `frag_offset`, `frag_users`).
#[derive(Debug, Default)]
struct FragState {
    netmem: Option<NetmemRef>,
    offset: u32,
    users: u32,
}

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

/// Pool ids are 24-bit (they live in `NetmemDesc`) and never 0.
fn next_pool_id() -> u32 {
    loop {
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed) & ((1 << 24) - 1);
        if id != 0 {
            return id;
        }
    }
}

/// A per-queue recycling allocator of netmems (Linux: `struct page_pool`).
pub struct PagePool {
    // Hot: owner-only alloc side.
    count: usize,
    cache: [NetmemRef; PP_ALLOC_CACHE_SIZE],
    counters: Arc<PoolCounters>,
    frag: FragState,
    shared: Arc<PoolShared>,
    // Cold.
    chunk_size: u32,
    nid: Option<u32>,
    destroyed: bool,
}

impl std::fmt::Debug for PagePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagePool")
            .field("shared", &self.shared)
            .field("cached", &self.count)
            .field("frag", &self.frag)
            .finish()
    }
}

impl PagePool {
    /// A pool over `provider`'s memory (Linux: `page_pool_create`).
    pub fn new(
        params: PagePoolParams,
        mut provider: Box<dyn MemoryProvider>,
    ) -> Result<Self, PagePoolError> {
        if params.ring_size == 0 {
            return Err(PagePoolError::RingSize(params.ring_size));
        }
        let id = next_pool_id();
        provider.init(id)?;
        let counters = Arc::new(PoolCounters::default());
        let area = Arc::clone(provider.area());
        let chunk_size = area.chunk_size();
        let shared = Arc::new(PoolShared {
            id,
            area,
            ring: ArrayQueue::new(params.ring_size),
            counters: Arc::clone(&counters),
            hold_cnt: AtomicU64::new(0),
            release_cnt: AtomicU64::new(0),
            destroyed: AtomicBool::new(false),
            memory_released: AtomicBool::new(false),
            provider: Mutex::new(ProviderSlot {
                provider,
                destroyed: false,
            }),
        });
        Ok(PagePool {
            count: 0,
            cache: [NetmemRef::from_raw(0); PP_ALLOC_CACHE_SIZE],
            counters,
            frag: FragState::default(),
            shared,
            chunk_size,
            nid: params.nid,
            destroyed: false,
        })
    }

    /// The pool's id (as recorded in its netmems' descriptors).
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// The area all of this pool's netmems are chunks of: resolve them with
    /// [`NetIovArea::net_iov`] or turn them into frags with [`NetIovArea::push_frag`].
    pub fn area(&self) -> &Arc<NetIovArea> {
        &self.shared.area
    }

    /// Size of each netmem.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// A handle other threads use to return netmems.
    pub fn recycler(&self) -> PagePoolRecycler {
        PagePoolRecycler {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Allocate one whole netmem (Linux: `page_pool_alloc_netmems` in NAPI context).
    #[inline]
    pub fn alloc_netmem_direct(&mut self) -> Option<NetmemRef> {
        if let Some(top) = self.count.checked_sub(1) {
            self.count = top;
            self.counters.alloc.fast.inc();
            return Some(self.cache[top]);
        }
        self.alloc_netmem_slow()
    }

    /// Drop one reference to `netmem` from the owner (Linux: `page_pool_put_netmem`
    /// with direct recycling). The last reference puts it in the alloc cache, or in the
    /// ring when the cache is full.
    #[inline]
    pub fn put_netmem_direct(&mut self, netmem: NetmemRef) {
        let Some(desc) = self.shared.desc(netmem) else {
            return put_foreign(self.shared.id, netmem);
        };
        if !unref_netmem(desc, 1) {
            return;
        }
        if externally_referenced(desc) {
            return self.shared.release_referenced(netmem);
        }
        self.recycle_direct(netmem);
    }

    /// [`Self::put_netmem_direct`] for each of `netmems`.
    pub fn put_netmem_bulk_direct(&mut self, netmems: &[NetmemRef]) {
        for &netmem in netmems {
            self.put_netmem_direct(netmem);
        }
    }

    /// Allocate `size` bytes of a netmem shared with other frags (Linux:
    /// `page_pool_alloc_frag_netmem`): returns the netmem and the frag's offset in it.
    /// `size` is rounded up to [`PP_FRAG_ALIGN`]; `None` when it exceeds the chunk size
    /// or the pool is out of memory. Put each frag with [`Self::put_netmem_direct`] or
    /// [`PagePoolRecycler::recycle`]; the netmem is recycled after the last.
    pub fn alloc_frag_direct(&mut self, size: u32) -> Option<(NetmemRef, u32)> {
        let size = size.max(1).checked_next_multiple_of(PP_FRAG_ALIGN)?;
        if size > self.chunk_size {
            return None;
        }
        if let Some(netmem) = self.frag.netmem {
            let offset = self.frag.offset;
            if u64::from(offset) + u64::from(size) <= u64::from(self.chunk_size) {
                self.frag.users += 1;
                self.frag.offset = offset + size;
                return Some((netmem, offset));
            }
            self.frag.netmem = None;
            if self.drain_frag(netmem) {
                // Every frag already came back: carve the same netmem again.
                self.counters.alloc.recycle_cached.inc();
                self.counters.alloc.fast.inc();
                return Some(self.frag_reset(netmem, size));
            }
        }
        let netmem = self.alloc_netmem_direct()?;
        Some(self.frag_reset(netmem, size))
    }

    fn frag_reset(&mut self, netmem: NetmemRef, size: u32) -> (NetmemRef, u32) {
        if let Some(desc) = self.shared.desc(netmem) {
            desc.set_ref_count(BIAS_MAX);
        }
        self.frag = FragState {
            netmem: Some(netmem),
            offset: size,
            users: 1,
        };
        (netmem, 0)
    }

    /// Drop the bias no frag took (Linux: `page_pool_drain_frag`); true when no frag
    /// is out any more and the netmem can be carved again at once.
    fn drain_frag(&mut self, netmem: NetmemRef) -> bool {
        let Some(desc) = self.shared.desc(netmem) else {
            return false;
        };
        // users <= chunk_size / PP_FRAG_ALIGN < 2^26, far below the bias.
        if !unref_netmem(desc, BIAS_MAX - self.frag.users) {
            return false;
        }
        if externally_referenced(desc) {
            self.shared.release_referenced(netmem);
            return false;
        }
        true
    }

    #[inline]
    fn recycle_direct(&mut self, netmem: NetmemRef) {
        if self.count < PP_ALLOC_CACHE_SIZE {
            self.cache[self.count] = netmem;
            self.count += 1;
            self.counters.alloc.recycle_cached.inc();
            return;
        }
        self.counters.alloc.recycle_cache_full.inc();
        self.shared.recycle_in_ring(netmem);
    }

    #[cold]
    #[inline(never)]
    fn alloc_netmem_slow(&mut self) -> Option<NetmemRef> {
        self.refill_alloc_cache()
            .or_else(|| self.alloc_from_provider())
    }

    /// Whether this pool takes memory from its area's NUMA node
    /// (Linux: `netmem_is_pref_nid`).
    fn prefers_area_node(&self) -> bool {
        match (self.nid, self.shared.area.nid()) {
            (Some(pref), Some(node)) => pref == node,
            _ => true,
        }
    }

    /// Refill the alloc cache from the recycle ring (Linux:
    /// `page_pool_refill_alloc_cache`).
    fn refill_alloc_cache(&mut self) -> Option<NetmemRef> {
        if self.shared.ring.is_empty() {
            self.counters.alloc.empty.inc();
            return None;
        }
        if !self.prefers_area_node() {
            if let Some(netmem) = self.shared.ring.pop() {
                self.shared.release_netmem(netmem);
                self.counters.alloc.waive.inc();
            }
            return None;
        }
        while self.count < PP_ALLOC_CACHE_REFILL {
            let Some(netmem) = self.shared.ring.pop() else {
                break;
            };
            self.cache[self.count] = netmem;
            self.count += 1;
        }
        let top = self.count.checked_sub(1)?;
        self.count = top;
        self.counters.alloc.refill.inc();
        Some(self.cache[top])
    }

    /// Refill the alloc cache from the provider (Linux: the `alloc_netmems` op).
    fn alloc_from_provider(&mut self) -> Option<NetmemRef> {
        debug_assert_eq!(self.count, 0);
        let PagePool {
            shared,
            cache,
            count,
            counters,
            ..
        } = self;
        let got = {
            let mut slot = shared.lock_provider();
            slot.provider
                .alloc_netmems(&mut cache[..PP_ALLOC_CACHE_REFILL])
        };
        let mut kept = 0;
        for i in 0..got.min(PP_ALLOC_CACHE_REFILL) {
            let netmem = cache[i];
            let Some(desc) = shared.area.desc(netmem) else {
                log::error!(
                    "memory provider of page pool {} handed out {netmem:?}, not a chunk of area {}; dropped",
                    shared.id,
                    shared.area.id()
                );
                continue;
            };
            // Linux: page_pool_set_pp_info.
            desc.set_pool_id(shared.id);
            desc.set_ref_count(1);
            cache[kept] = netmem;
            kept += 1;
        }
        shared
            .hold_cnt
            .fetch_add(u64::try_from(kept).unwrap_or(u64::MAX), Ordering::AcqRel);
        let top = kept.checked_sub(1)?;
        *count = top;
        counters.alloc.slow.inc();
        Some(cache[top])
    }

    /// Change the preferred NUMA node (Linux: `page_pool_nid_changed`).
    pub fn nid_changed(&mut self, nid: Option<u32>) {
        self.nid = nid;
    }

    /// Netmems this pool answers for: taken from the provider and not yet given back
    /// (`hold_cnt - release_cnt`; includes those in the cache and the ring).
    pub fn inflight(&self) -> u64 {
        self.shared.inflight()
    }

    /// Netmems in the alloc cache.
    pub fn cached(&self) -> usize {
        self.count
    }

    /// Netmems waiting in the recycle ring.
    pub fn ring_len(&self) -> usize {
        self.shared.ring.len()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> PagePoolStats {
        self.counters.read()
    }

    /// A handle that reads this pool's counters from another thread.
    pub fn stats_reader(&self) -> PagePoolStatsReader {
        PagePoolStatsReader(Arc::clone(&self.counters))
    }

    /// Tear the pool down (Linux: `page_pool_destroy`): give the cache, the ring and
    /// the frag being carved back to the provider; destroy the provider if nothing is in
    /// flight, otherwise park the pool (reported with a warning) so that its memory
    /// stays until the last netmem is returned.
    pub fn destroy(mut self) -> PagePoolDestroy {
        self.release_all()
    }

    fn release_all(&mut self) -> PagePoolDestroy {
        self.destroyed = true;
        if let Some(netmem) = self.frag.netmem.take() {
            // Linux: page_pool_free_frag.
            if let Some(desc) = self.shared.desc(netmem) {
                if unref_netmem(desc, BIAS_MAX - self.frag.users) {
                    self.shared.release_netmem(netmem);
                }
            }
        }
        let shared = Arc::clone(&self.shared);
        let mut slot = shared.lock_provider();
        for &netmem in &self.cache[..self.count] {
            shared.release_locked(&mut slot, netmem);
        }
        self.count = 0;
        shared.destroyed.store(true, Ordering::SeqCst);
        while let Some(netmem) = shared.ring.pop() {
            shared.release_locked(&mut slot, netmem);
        }
        if shared.finish_if_idle(&mut slot) {
            return PagePoolDestroy::Released;
        }
        // Parked under the provider lock, so that a concurrent last return (which
        // unparks under the same lock) cannot run before the pool is on the list.
        park(&shared);
        log::warn!(
            "page pool {} destroyed with {} netmems in flight; its memory is kept until they are returned",
            shared.id,
            shared.inflight()
        );
        PagePoolDestroy::Parked(PagePoolParked(Arc::clone(&shared)))
    }
}

impl Drop for PagePool {
    fn drop(&mut self) {
        if !self.destroyed {
            let _ = self.release_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::mpsc;
    use std::thread;

    use proptest::prelude::*;

    use super::*;
    use crate::netmem::{AreaBacking, AreaProvider, FragList};

    /// What the provider under a test pool has seen.
    #[derive(Debug, Default)]
    struct ProviderLog {
        outstanding: HashSet<NetmemRef>,
        destroyed: bool,
    }

    /// An [`AreaProvider`] that checks it never hands out a netmem twice and never gets
    /// back one it did not hand out, and lets the test see what is outstanding.
    struct CheckedProvider {
        inner: AreaProvider,
        log: Arc<Mutex<ProviderLog>>,
    }

    impl MemoryProvider for CheckedProvider {
        fn init(&mut self, pool_id: u32) -> Result<(), PagePoolError> {
            self.inner.init(pool_id)
        }

        fn alloc_netmems(&mut self, out: &mut [NetmemRef]) -> usize {
            let n = self.inner.alloc_netmems(out);
            let mut log = self.log.lock().unwrap();
            for netmem in &out[..n] {
                assert!(
                    log.outstanding.insert(*netmem),
                    "provider handed out {netmem:?} twice"
                );
            }
            n
        }

        fn release_netmem(&mut self, netmem: NetmemRef) {
            let mut log = self.log.lock().unwrap();
            assert!(
                log.outstanding.remove(&netmem),
                "{netmem:?} released but not outstanding"
            );
            self.inner.release_netmem(netmem);
        }

        fn destroy(&mut self) {
            let mut log = self.log.lock().unwrap();
            assert!(
                log.outstanding.is_empty(),
                "provider destroyed with netmems out"
            );
            assert!(!log.destroyed, "provider destroyed twice");
            log.destroyed = true;
            self.inner.destroy();
        }

        fn area(&self) -> &Arc<NetIovArea> {
            self.inner.area()
        }
    }

    fn checked_pool_over(
        inner: AreaProvider,
        params: PagePoolParams,
    ) -> (PagePool, Arc<Mutex<ProviderLog>>) {
        let log = Arc::new(Mutex::new(ProviderLog::default()));
        let provider = CheckedProvider {
            inner,
            log: Arc::clone(&log),
        };
        (PagePool::new(params, Box::new(provider)).unwrap(), log)
    }

    fn checked_pool(chunks: usize, ring_size: usize) -> (PagePool, Arc<Mutex<ProviderLog>>) {
        let inner = AreaProvider::host_pages(chunks * 4096, 4096).unwrap();
        checked_pool_over(
            inner,
            PagePoolParams {
                ring_size,
                nid: None,
            },
        )
    }

    fn outstanding(log: &Mutex<ProviderLog>) -> usize {
        log.lock().unwrap().outstanding.len()
    }

    fn assert_released(pool: PagePool, log: &Mutex<ProviderLog>) {
        assert!(matches!(pool.destroy(), PagePoolDestroy::Released));
        let log = log.lock().unwrap();
        assert!(log.destroyed);
        assert!(log.outstanding.is_empty());
    }

    #[test]
    fn fast_path_is_lifo_and_refills_in_batches() {
        let (mut pool, log) = checked_pool(200, 16);
        let a = pool.alloc_netmem_direct().unwrap();
        assert_eq!(pool.inflight(), 64);
        assert_eq!(pool.cached(), 63);
        assert_eq!(outstanding(&log), 64);
        pool.put_netmem_direct(a);
        assert_eq!(pool.alloc_netmem_direct(), Some(a));
        pool.put_netmem_direct(a);
        let s = pool.stats();
        assert_eq!((s.alloc_slow, s.alloc_fast, s.recycle_cached), (1, 1, 2));
        // The first slow path found the ring empty.
        assert_eq!(s.alloc_empty, 1);
        assert_released(pool, &log);
    }

    #[test]
    fn runs_dry_then_serves_returns() {
        let (mut pool, log) = checked_pool(3, 16);
        let got: Vec<_> = (0..3)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        assert_eq!(pool.alloc_netmem_direct(), None);
        let distinct: HashSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), 3);
        pool.put_netmem_bulk_direct(&got);
        assert_eq!(pool.cached(), 3);
        assert_eq!(pool.inflight(), 3);
        for _ in 0..3 {
            assert!(pool.alloc_netmem_direct().is_some());
        }
        assert_eq!(pool.alloc_netmem_direct(), None);
        pool.put_netmem_bulk_direct(&got);
        assert_released(pool, &log);
    }

    #[test]
    fn cache_overflow_goes_to_ring_then_provider() {
        let total = PP_ALLOC_CACHE_SIZE + 6;
        let (mut pool, log) = checked_pool(total, 4);
        let got: Vec<_> = (0..total)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        pool.put_netmem_bulk_direct(&got);
        let s = pool.stats();
        assert_eq!(
            s.recycle_cached,
            u64::try_from(PP_ALLOC_CACHE_SIZE).unwrap()
        );
        assert_eq!(s.recycle_cache_full, 6);
        assert_eq!(s.recycle_ring, 4);
        assert_eq!(s.recycle_ring_full, 2);
        assert_eq!(pool.ring_len(), 4);
        assert_eq!(
            pool.inflight(),
            u64::try_from(PP_ALLOC_CACHE_SIZE + 4).unwrap()
        );
        assert_eq!(outstanding(&log), PP_ALLOC_CACHE_SIZE + 4);
        // Everything can be allocated again: cache, then ring, then provider.
        let again: HashSet<_> = (0..total)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        assert_eq!(again.len(), total);
        assert_eq!(pool.stats().alloc_refill, 1);
        for n in again {
            pool.put_netmem_direct(n);
        }
        assert_released(pool, &log);
    }

    #[test]
    fn recycle_from_another_thread_refills_the_cache() {
        let (mut pool, log) = checked_pool(64, 1024);
        let got: Vec<_> = (0..64)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        assert_eq!(pool.alloc_netmem_direct(), None);
        let recycler = pool.recycler();
        thread::spawn(move || {
            for n in got {
                assert!(recycler.recycle(n));
            }
        })
        .join()
        .unwrap();
        assert_eq!(pool.ring_len(), 64);
        let back: HashSet<_> = (0..64)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        assert_eq!(back.len(), 64);
        let s = pool.stats();
        assert_eq!(s.recycle_ring, 64);
        assert_eq!(s.alloc_refill, 1);
        // 63 from the first batch out of the provider, 63 from the refilled cache.
        assert_eq!(s.alloc_fast, 126);
        for n in back {
            pool.put_netmem_direct(n);
        }
        assert_released(pool, &log);
    }

    #[test]
    fn ring_overflow_is_counted_and_nothing_leaks() {
        let (mut pool, log) = checked_pool(20, 8);
        let got: Vec<_> = (0..20)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        let recycler = pool.recycler();
        let refused =
            thread::spawn(move || got.into_iter().filter(|&n| !recycler.recycle(n)).count())
                .join()
                .unwrap();
        assert_eq!(refused, 12);
        let s = pool.stats();
        assert_eq!((s.recycle_ring, s.recycle_ring_full), (8, 12));
        // The 12 went back to the provider, the 8 wait in the ring.
        assert_eq!(pool.inflight(), 8);
        assert_eq!(outstanding(&log), 8);
        // All 20 can be allocated again.
        let again: HashSet<_> = (0..20)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        assert_eq!(again.len(), 20);
        for n in again {
            pool.put_netmem_direct(n);
        }
        assert_released(pool, &log);
    }

    #[test]
    fn frags_share_a_netmem_until_every_frag_is_put() {
        let (mut pool, log) = checked_pool(4, 16);
        // 1000 rounds up to 1024: four frags per 4 KiB chunk.
        let frags: Vec<_> = (0..4)
            .map(|_| pool.alloc_frag_direct(1000).unwrap())
            .collect();
        let first = frags[0].0;
        assert!(frags.iter().all(|&(n, _)| n == first));
        assert_eq!(
            frags.iter().map(|&(_, o)| o).collect::<Vec<_>>(),
            [0, 1024, 2048, 3072]
        );
        // The fifth does not fit: a new netmem; the first is still out.
        let (second, off) = pool.alloc_frag_direct(1000).unwrap();
        assert_ne!(second, first);
        assert_eq!(off, 0);
        let cached = pool.cached();
        for &(n, _) in &frags[..3] {
            pool.put_netmem_direct(n);
            assert_eq!(pool.cached(), cached, "recycled before its last frag");
        }
        let recycler = pool.recycler();
        assert!(recycler.recycle(frags[3].0));
        assert_eq!(
            pool.ring_len(),
            1,
            "the last frag's put recycles the netmem"
        );
        // Drain-and-reuse: once its frags are back, the carved netmem is reused at once.
        pool.put_netmem_direct(second);
        let more: Vec<_> = (0..3)
            .map(|_| pool.alloc_frag_direct(1024).unwrap())
            .collect();
        assert!(more.iter().all(|&(n, _)| n == second));
        for &(n, _) in &more {
            pool.put_netmem_direct(n);
        }
        let before = pool.stats();
        assert_eq!(pool.alloc_frag_direct(1024), Some((second, 0)));
        let after = pool.stats();
        assert_eq!(after.recycle_cached, before.recycle_cached + 1);
        assert_eq!(after.alloc_fast, before.alloc_fast + 1);
        assert_eq!(after.alloc_slow, before.alloc_slow);
        pool.put_netmem_direct(second);
        assert_released(pool, &log);
    }

    #[test]
    fn oversized_and_zero_frags() {
        let (mut pool, log) = checked_pool(2, 16);
        assert_eq!(pool.alloc_frag_direct(4097), None);
        assert_eq!(pool.alloc_frag_direct(u32::MAX), None);
        let (n, off) = pool.alloc_frag_direct(0).unwrap();
        assert_eq!(off, 0);
        assert_eq!(pool.alloc_frag_direct(1).unwrap(), (n, PP_FRAG_ALIGN));
        pool.put_netmem_bulk_direct(&[n, n]);
        assert_released(pool, &log);
    }

    #[test]
    fn destroy_with_inflight_keeps_the_memory() {
        let (mut pool, log) = checked_pool(8, 16);
        let held: Vec<_> = (0..3)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        let (frag, _) = pool.alloc_frag_direct(100).unwrap();
        let recycler = pool.recycler();
        let area = Arc::clone(pool.area());
        let id = pool.id();
        let PagePoolDestroy::Parked(parked) = pool.destroy() else {
            panic!("destroyed with netmems in flight");
        };
        assert_eq!(parked.id(), id);
        assert_eq!(parked.inflight(), 4);
        assert!(!parked.is_released());
        assert!(parked_pools().iter().any(|p| p.id() == id));
        assert!(!log.lock().unwrap().destroyed);
        assert_eq!(outstanding(&log), 4);
        // The held memory is still there and usable.
        let mut list = FragList::new();
        area.push_frag(held[0], 0, 4, &mut list).unwrap();
        assert_eq!(list.copy_from(&[9, 8, 7, 6]), 4);
        let mut back = [0u8; 4];
        assert_eq!(list.copy_to(&mut back), 4);
        assert_eq!(back, [9, 8, 7, 6]);
        drop(list);
        // Returns after destroy go to the provider; the last one releases the pool.
        recycler.recycle(held[0]);
        recycler.recycle(held[1]);
        recycler.recycle(frag);
        assert_eq!(parked.inflight(), 1);
        assert!(!parked.is_released());
        assert!(!log.lock().unwrap().destroyed);
        recycler.recycle(held[2]);
        assert_eq!(parked.inflight(), 0);
        assert!(parked.is_released());
        assert!(log.lock().unwrap().destroyed);
        assert!(parked_pools().iter().all(|p| p.id() != id));
        assert_eq!(recycler.ring_len(), 0);
    }

    #[test]
    fn dropping_an_undestroyed_pool_destroys_it() {
        let (mut pool, log) = checked_pool(4, 16);
        let a = pool.alloc_netmem_direct().unwrap();
        let (b, _) = pool.alloc_frag_direct(100).unwrap();
        pool.put_netmem_bulk_direct(&[a, b]);
        drop(pool);
        assert!(log.lock().unwrap().destroyed);
    }

    #[test]
    fn externally_referenced_netmems_are_released_not_recycled() {
        let (mut pool, log) = checked_pool(2, 16);
        let a = pool.alloc_netmem_direct().unwrap();
        let b = pool.alloc_netmem_direct().unwrap();
        let desc = |n| pool.area().desc(n).unwrap();
        desc(a).set_flags(NETMEM_DESC_EXTERNAL_REF);
        desc(b).set_flags(NETMEM_DESC_EXTERNAL_REF);
        let area = Arc::clone(pool.area());
        pool.put_netmem_direct(a);
        assert!(!pool.recycler().recycle(b));
        let s = pool.stats();
        assert_eq!(s.recycle_released_ref, 2);
        assert_eq!((s.recycle_cached, s.recycle_ring), (0, 0));
        assert_eq!(pool.inflight(), 0);
        // The provider keeps them back while the outside reference lasts.
        assert_eq!(pool.alloc_netmem_direct(), None);
        area.desc(a).unwrap().clear_flags(NETMEM_DESC_EXTERNAL_REF);
        assert_eq!(pool.alloc_netmem_direct(), Some(a));
        pool.put_netmem_direct(a);
        area.desc(b).unwrap().clear_flags(NETMEM_DESC_EXTERNAL_REF);
        assert_released(pool, &log);
    }

    #[test]
    fn ring_netmems_from_another_node_are_waived() {
        let area = Arc::new(NetIovArea::anonymous(4 * 4096, 4096).unwrap().with_nid(0));
        let (mut pool, log) = checked_pool_over(
            AreaProvider::new(area),
            PagePoolParams {
                ring_size: 16,
                nid: Some(0),
            },
        );
        let got: Vec<_> = (0..4)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        let recycler = pool.recycler();
        for &n in &got {
            assert!(recycler.recycle(n));
        }
        pool.nid_changed(Some(1));
        // The ring holds memory of node 0: one entry is waived, the provider (also node 0,
        // but the only memory there is) serves the allocation.
        let n = pool.alloc_netmem_direct().unwrap();
        let s = pool.stats();
        assert_eq!(s.alloc_waive, 1);
        assert_eq!(s.alloc_refill, 0);
        assert_eq!(pool.ring_len(), 3);
        pool.nid_changed(None);
        pool.put_netmem_direct(n);
        assert_released(pool, &log);
    }

    #[test]
    fn foreign_netmems_are_ignored() {
        let (mut pool, log) = checked_pool(2, 16);
        let (other, other_log) = checked_pool(2, 16);
        let n = pool.alloc_netmem_direct().unwrap();
        // A handle of another area, and one of this area the pool does not hold.
        let mut other = other;
        let m = other.alloc_netmem_direct().unwrap();
        pool.put_netmem_direct(m);
        assert!(!pool.recycler().recycle(m));
        pool.put_netmem_direct(NetmemRef::page(0, 0));
        assert_eq!(pool.cached(), 1);
        other.put_netmem_direct(m);
        pool.put_netmem_direct(n);
        assert_released(pool, &log);
        assert_released(other, &other_log);
    }

    #[test]
    fn pooled_netmems_become_frags() {
        let (mut pool, log) = checked_pool(2, 16);
        let (n, off) = pool.alloc_frag_direct(1500).unwrap();
        let area = Arc::clone(pool.area());
        let mut list = FragList::new();
        area.push_frag(n, off, 1500, &mut list).unwrap();
        assert_eq!(list.len(), 1500);
        let data: Vec<u8> = (0..1500u32)
            .map(|i| u8::try_from(i % 256).unwrap())
            .collect();
        assert_eq!(list.copy_from(&data), 1500);
        let (host, len) = {
            let niov = area.net_iov(n).unwrap();
            (niov.addr(), niov.len())
        };
        assert_eq!(len, 4096);
        assert_eq!(list.iovecs()[0].iov_base.cast::<u8>(), host.as_ptr());
        drop(list);
        pool.put_netmem_direct(n);
        assert_released(pool, &log);
    }

    #[test]
    fn handles_cross_threads() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<PagePool>();
        send_sync::<PagePoolRecycler>();
        send_sync::<PagePoolParked>();
        send_sync::<NetIovArea>();
    }

    #[test]
    fn zero_ring_size_is_refused() {
        let p = AreaProvider::host_pages(4096, 4096).unwrap();
        let e = PagePool::new(
            PagePoolParams {
                ring_size: 0,
                nid: None,
            },
            Box::new(p),
        )
        .unwrap_err();
        assert!(matches!(e, PagePoolError::RingSize(0)));
        assert!(e.to_string().contains("ring size 0"));
    }

    /// Every counter moves in some scenario: a counter nothing increments is either dead
    /// or untested (Firecracker's rule). `alloc_slow_high_order` is exempt: the pool
    /// never allocates high-order memory.
    #[test]
    fn every_stat_counter_moves() {
        let area = Arc::new(NetIovArea::anonymous(200 * 4096, 4096).unwrap().with_nid(0));
        let (mut pool, log) = checked_pool_over(
            AreaProvider::new(area),
            PagePoolParams {
                ring_size: 4,
                nid: Some(0),
            },
        );
        let recycler = pool.recycler();
        // alloc_slow, alloc_empty, alloc_fast.
        let mut held: Vec<_> = (0..140)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        // recycle_cached, recycle_cache_full, recycle_ring, recycle_ring_full.
        pool.put_netmem_bulk_direct(&held.split_off(6));
        // alloc_refill: empty the cache (128), then the ring (4) refills it.
        let mut again: Vec<_> = (0..132)
            .map(|_| pool.alloc_netmem_direct().unwrap())
            .collect();
        assert_eq!((pool.cached(), pool.ring_len()), (0, 0));
        // alloc_waive.
        assert!(recycler.recycle(again.pop().unwrap()));
        pool.nid_changed(Some(1));
        again.push(pool.alloc_netmem_direct().unwrap());
        pool.nid_changed(Some(0));
        // recycle_released_ref.
        let n = held.pop().unwrap();
        pool.area()
            .desc(n)
            .unwrap()
            .set_flags(NETMEM_DESC_EXTERNAL_REF);
        assert!(!recycler.recycle(n));
        pool.area()
            .desc(n)
            .unwrap()
            .clear_flags(NETMEM_DESC_EXTERNAL_REF);

        let stats = serde_json::to_value(pool.stats()).unwrap();
        let fields = stats.as_object().unwrap();
        assert_eq!(fields.len(), 11);
        // The names the stats file shows (`fields`, through a reader on another
        // thread) are the serialized ones, with the same values.
        let reader = pool.stats_reader();
        let from_thread = thread::spawn(move || reader.read().fields())
            .join()
            .unwrap();
        assert_eq!(from_thread.len(), fields.len());
        for (name, value) in from_thread {
            assert_eq!(fields[name].as_u64(), Some(value), "{name}");
        }
        for (name, value) in fields {
            if name == "alloc_slow_high_order" {
                continue;
            }
            assert!(
                value.as_u64().unwrap() > 0,
                "page pool counter {name} never moved"
            );
        }
        pool.put_netmem_bulk_direct(&held);
        pool.put_netmem_bulk_direct(&again);
        assert_released(pool, &log);
    }

    /// Hugetlb-backed pools, when huge pages can be had (root raises
    /// /proc/sys/vm/nr_hugepages if needed); the fallback to anonymous memory otherwise.
    #[test]
    fn hugetlb_provider_or_fallback() {
        let huge = default_hugepage_size_for_test();
        let len = 2 * huge;
        if !ensure_free_hugepages(2) {
            eprintln!(
                "SKIP hugetlb part: fewer than 2 free huge pages and /proc/sys/vm/nr_hugepages \
                 cannot be raised (not root, or the kernel has no huge pages to give)"
            );
        } else {
            let p = AreaProvider::hugetlb(len, 2048).unwrap();
            assert_eq!(p.backing(), AreaBacking::Memfd { hugetlb: true });
            let (mut pool, log) = checked_pool_over(p, PagePoolParams::default());
            let n: Vec<_> = (0..100)
                .map(|_| pool.alloc_netmem_direct().unwrap())
                .collect();
            let mut list = FragList::new();
            let area = Arc::clone(pool.area());
            for &m in &n {
                area.push_frag(m, 0, 2048, &mut list).unwrap();
            }
            let data = vec![0x5a; list.len()];
            assert_eq!(list.copy_from(&data), data.len());
            drop(list);
            pool.put_netmem_bulk_direct(&n);
            assert_released(pool, &log);
        }
        // More huge pages than are free: the provider falls back to anonymous memory.
        let free = hugepages_free().unwrap_or(0);
        let p = AreaProvider::hugetlb((free + 64) * huge, 4096).unwrap();
        assert_eq!(p.backing(), AreaBacking::Anonymous);
    }

    fn default_hugepage_size_for_test() -> usize {
        crate::netmem::default_hugepage_size()
    }

    fn hugepages_free() -> Option<usize> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))?
            .trim()
            .parse()
            .ok()
    }

    /// Make sure `n` huge pages are free, raising nr_hugepages by `n` if needed (left
    /// raised: lowering it could take pages from another process that just got them).
    fn ensure_free_hugepages(n: usize) -> bool {
        if hugepages_free().is_some_and(|f| f >= n) {
            return true;
        }
        let path = "/proc/sys/vm/nr_hugepages";
        let Some(total) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        else {
            return false;
        };
        if std::fs::write(path, format!("{}\n", total + n)).is_err() {
            return false;
        }
        hugepages_free().is_some_and(|f| f >= n)
    }

    /// Who holds what, shared with the recycling thread: a netmem is held whole, or as
    /// a set of non-overlapping frags.
    #[derive(Debug)]
    enum Holding {
        Whole,
        Frags(Vec<(u32, u32)>),
    }

    type Holdings = Arc<Mutex<HashMap<NetmemRef, Holding>>>;

    /// One reference the test holds: a whole netmem or a frag `(offset, len)` of one.
    type Ref = (NetmemRef, Option<(u32, u32)>);

    fn drop_holding(holdings: &Holdings, (netmem, frag): Ref) {
        let mut h = holdings.lock().unwrap();
        let empty = match (h.get_mut(&netmem), frag) {
            (Some(Holding::Whole), None) => true,
            (Some(Holding::Frags(v)), Some(range)) => {
                let i = v.iter().position(|r| *r == range).expect("frag not held");
                v.swap_remove(i);
                v.is_empty()
            }
            other => panic!("dropping {netmem:?} {frag:?} but holding is {other:?}"),
        };
        if empty {
            h.remove(&netmem);
        }
    }

    fn take_holding(holdings: &Holdings, (netmem, frag): Ref) -> Result<(), TestCaseError> {
        let mut h = holdings.lock().unwrap();
        match (h.get_mut(&netmem), frag) {
            (None, None) => {
                h.insert(netmem, Holding::Whole);
            }
            (None, Some(range)) => {
                h.insert(netmem, Holding::Frags(vec![range]));
            }
            (Some(Holding::Frags(v)), Some((off, len))) => {
                let overlaps = v.iter().any(|&(o, l)| off < o + l && o < off + len);
                prop_assert!(
                    !overlaps,
                    "frag {off}+{len} of {netmem:?} overlaps one held: {v:?}"
                );
                v.push((off, len));
            }
            (held, _) => {
                return Err(TestCaseError::fail(format!(
                    "{netmem:?} {frag:?} handed out while held as {held:?}"
                )));
            }
        }
        Ok(())
    }

    enum ToThread {
        Recycle(Ref),
        Sync(mpsc::Sender<()>),
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc,
        AllocFrag(u32),
        Put(usize),
        PutBulk(usize),
        Send(usize),
        Sync,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Alloc),
            3 => (0u32..4200).prop_map(Op::AllocFrag),
            3 => any::<usize>().prop_map(Op::Put),
            1 => (1usize..40).prop_map(Op::PutBulk),
            2 => any::<usize>().prop_map(Op::Send),
            1 => Just(Op::Sync),
        ]
    }

    /// The bookkeeping of the test against the pool's.
    struct Model {
        held: Vec<Ref>,
        /// Whole allocations plus frags that started a carving (offset 0).
        handouts: u64,
        /// The netmem the pool is carving frags from.
        cursor: Option<NetmemRef>,
    }

    fn check_accounting(
        pool: &PagePool,
        holdings: &Holdings,
        m: &Model,
    ) -> Result<(), TestCaseError> {
        let mut out: HashSet<NetmemRef> = holdings.lock().unwrap().keys().copied().collect();
        out.extend(m.cursor);
        let expect = pool.cached() + pool.ring_len() + out.len();
        prop_assert_eq!(pool.inflight(), u64::try_from(expect).unwrap());
        let s = pool.stats();
        prop_assert_eq!(s.alloc_fast + s.alloc_slow + s.alloc_refill, m.handouts);
        Ok(())
    }

    fn run_ops(chunks: usize, ring_size: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let (mut pool, log) = checked_pool(chunks, ring_size);
        let holdings: Holdings = Arc::default();
        let (tx, rx) = mpsc::channel::<ToThread>();
        let recycler = pool.recycler();
        let thread_holdings = Arc::clone(&holdings);
        let worker = thread::spawn(move || {
            for msg in rx {
                match msg {
                    ToThread::Recycle(r) => {
                        // Forget it first: once recycled the pool may hand it out again.
                        drop_holding(&thread_holdings, r);
                        recycler.recycle(r.0);
                    }
                    ToThread::Sync(ack) => ack.send(()).unwrap(),
                }
            }
        });
        let sync = |tx: &mpsc::Sender<ToThread>| {
            let (ack_tx, ack_rx) = mpsc::channel();
            tx.send(ToThread::Sync(ack_tx)).unwrap();
            ack_rx.recv().unwrap();
        };
        let mut m = Model {
            held: Vec::new(),
            handouts: 0,
            cursor: None,
        };
        for op in ops {
            match op {
                Op::Alloc => {
                    if let Some(n) = pool.alloc_netmem_direct() {
                        take_holding(&holdings, (n, None))?;
                        m.held.push((n, None));
                        m.handouts += 1;
                    }
                }
                Op::AllocFrag(size) => match pool.alloc_frag_direct(size) {
                    Some((n, off)) => {
                        let len = size.max(1).next_multiple_of(PP_FRAG_ALIGN);
                        prop_assert!(off + len <= pool.chunk_size());
                        take_holding(&holdings, (n, Some((off, len))))?;
                        m.held.push((n, Some((off, len))));
                        m.cursor = Some(n);
                        if off == 0 {
                            m.handouts += 1;
                        }
                    }
                    None if size <= pool.chunk_size() => m.cursor = None,
                    None => {}
                },
                Op::Put(i) if !m.held.is_empty() => {
                    let r = m.held.swap_remove(i % m.held.len());
                    drop_holding(&holdings, r);
                    pool.put_netmem_direct(r.0);
                }
                Op::PutBulk(n) => {
                    let k = n.min(m.held.len());
                    let batch: Vec<Ref> = m.held.drain(..k).collect();
                    for &r in &batch {
                        drop_holding(&holdings, r);
                    }
                    let netmems: Vec<NetmemRef> = batch.iter().map(|r| r.0).collect();
                    pool.put_netmem_bulk_direct(&netmems);
                }
                Op::Send(i) if !m.held.is_empty() => {
                    let r = m.held.swap_remove(i % m.held.len());
                    tx.send(ToThread::Recycle(r)).unwrap();
                }
                Op::Sync => {
                    sync(&tx);
                    check_accounting(&pool, &holdings, &m)?;
                }
                Op::Put(_) | Op::Send(_) => {}
            }
        }
        // Give everything back, half through the other thread.
        for (i, r) in std::mem::take(&mut m.held).into_iter().enumerate() {
            if i % 2 == 0 {
                tx.send(ToThread::Recycle(r)).unwrap();
            } else {
                drop_holding(&holdings, r);
                pool.put_netmem_direct(r.0);
            }
        }
        sync(&tx);
        check_accounting(&pool, &holdings, &m)?;
        prop_assert!(holdings.lock().unwrap().is_empty());
        // Each handout came back exactly once (the netmem being carved is still the
        // pool's own until destroy).
        let s = pool.stats();
        let returns =
            s.recycle_cached + s.recycle_ring + s.recycle_ring_full + s.recycle_released_ref;
        prop_assert_eq!(returns + u64::from(m.cursor.is_some()), m.handouts);
        drop(tx);
        worker.join().unwrap();
        prop_assert!(matches!(pool.destroy(), PagePoolDestroy::Released));
        let log = log.lock().unwrap();
        prop_assert!(log.destroyed);
        prop_assert!(log.outstanding.is_empty());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn accounting_survives_any_interleaving(
            chunks in 1usize..300,
            ring_size in 1usize..80,
            ops in proptest::collection::vec(op(), 0..400),
        ) {
            run_ops(chunks, ring_size, ops)?;
        }
    }

    /// The owner allocates and puts while another thread recycles at the same time; no
    /// netmem is ever handed out twice and the books balance at the end.
    #[test]
    fn concurrent_recycling_stress() {
        let (mut pool, log) = checked_pool(512, 64);
        let holdings: Holdings = Arc::default();
        let (tx, rx) = mpsc::sync_channel::<Ref>(256);
        let recycler = pool.recycler();
        let thread_holdings = Arc::clone(&holdings);
        let worker = thread::spawn(move || {
            for r in rx {
                drop_holding(&thread_holdings, r);
                recycler.recycle(r.0);
            }
        });
        let mut held: Vec<Ref> = Vec::new();
        for i in 0..200_000u32 {
            let got = if i % 3 == 0 {
                pool.alloc_frag_direct(700 + i % 2000).map(|(n, off)| {
                    (
                        n,
                        Some((off, (700 + i % 2000).next_multiple_of(PP_FRAG_ALIGN))),
                    )
                })
            } else {
                pool.alloc_netmem_direct().map(|n| (n, None))
            };
            if let Some(r) = got {
                take_holding(&holdings, r).unwrap();
                held.push(r);
            }
            if held.len() > 100 || got.is_none() {
                let r = held.swap_remove(usize::try_from(i).unwrap() % held.len());
                if i % 2 == 0 {
                    tx.send(r).unwrap();
                } else {
                    drop_holding(&holdings, r);
                    pool.put_netmem_direct(r.0);
                }
            }
        }
        for r in held {
            tx.send(r).unwrap();
        }
        drop(tx);
        worker.join().unwrap();
        assert!(holdings.lock().unwrap().is_empty());
        let s = pool.stats();
        assert!(s.recycle_ring > 0 && s.alloc_refill > 0);
        assert_released(pool, &log);
    }
}
