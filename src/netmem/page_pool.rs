// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
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
//!
//! Files (after the kernel's split of `net/core/page_pool*.c`):
//! - `page_pool.rs`, this one: the core: alloc cache, recycle ring, frags, destroy;
//! - `page_pool/stats.rs`: [`PagePoolStats`] and the counters behind
//!   [`PagePoolStatsReader`];
//! - `page_pool/parked.rs`: destroyed pools still waiting for netmems ([`parked_pools`]);
//! - `page_pool/tests.rs`: unit tests; `page_pool/tests/accounting.rs`: the property and
//!   stress tests.

mod parked;
mod stats;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_queue::ArrayQueue;

use self::parked::{park, unpark};
pub use self::parked::{parked_pools, PagePoolParked};
use self::stats::PoolCounters;
pub use self::stats::{PagePoolStats, PagePoolStatsReader};
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
///
/// Not used by the data path: the daemon's only pools are the AF_XDP queues' UMEM
/// pools, and each frame goes back through the `_direct` path on the worker that owns
/// the pool. It is the pool's other return path (DESIGN.md section 1: the recycle ring
/// takes returns from other threads; Linux: `page_pool_put_netmem` outside NAPI
/// context), for netmems whose last reference drops off the owner's thread, such as
/// frags handed to another thread or those a parked pool still waits for. The pool's
/// tests (cross-thread, ring overflow, property and stress tests) and the
/// `page_pool/ring` benches use it.
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
    ///
    /// Not used by the data path: the AF_XDP UMEM pools hand out whole frames (one
    /// packet per frame, aligned chunk mode). It is the pool's half of the frag model
    /// (DESIGN.md section 1: fragment allocation with a `pp_ref_count` bias), for a
    /// provider whose chunks hold several packets (a hugepage or memfd arena). The
    /// pool's tests (offsets, bias, property and stress tests) and the `page_pool/frag`
    /// bench use it.
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
        let parked = park(&shared);
        log::warn!(
            "page pool {} destroyed with {} netmems in flight; its memory is kept until they are returned",
            shared.id,
            shared.inflight()
        );
        PagePoolDestroy::Parked(parked)
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
mod tests;
