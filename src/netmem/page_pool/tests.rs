// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of the page pool: each path and counter on its own, over a checking provider
//! (no netmem handed out twice, none returned that was not out).
//!
//! - `accounting`: the books under concurrency: a property test over any interleaving
//!   of allocs, frags, direct puts and returns from another thread, and a stress test.

mod accounting;

use std::collections::HashSet;
use std::thread;

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
    let refused = thread::spawn(move || got.into_iter().filter(|&n| !recycler.recycle(n)).count())
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
