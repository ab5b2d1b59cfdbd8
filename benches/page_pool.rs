// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Page pool microbenchmarks: nanoseconds per alloc + return pair on each path.
//!
//! - `direct`: `alloc_netmem_direct` + `put_netmem_direct` (alloc cache only);
//! - `ring/single`: `PagePoolRecycler::recycle` then `alloc_netmem_direct` with an
//!   empty cache, so every allocation refills from the recycle ring;
//! - `ring/batch64`: 64 recycles, then 64 allocations (one refill, 63 cache hits),
//!   reported per pair;
//! - `frag`: `alloc_frag_direct(1500)` + `put_netmem_direct` (two frags per 4 KiB chunk).
//!
//! Run: `cargo bench --bench page_pool -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use vhost_netmem::netmem::{AreaProvider, PagePool, PagePoolParams};

fn pool(chunks: usize) -> PagePool {
    let provider = AreaProvider::host_pages(chunks * 4096, 4096).expect("pool memory");
    PagePool::new(PagePoolParams::default(), Box::new(provider)).expect("page pool")
}

fn direct(c: &mut Criterion) {
    let mut pool = pool(1024);
    // Warm the cache so the loop never leaves the fast path.
    let n = pool.alloc_netmem_direct().expect("netmem");
    pool.put_netmem_direct(n);
    c.bench_function("page_pool/direct", |b| {
        b.iter(|| {
            let n = pool.alloc_netmem_direct().expect("netmem");
            pool.put_netmem_direct(black_box(n));
        })
    });
}

/// A pool whose every netmem is out, so the cache and the provider are empty.
fn drained_pool(chunks: usize) -> (PagePool, Vec<vhost_netmem::netmem::NetmemRef>) {
    let mut pool = pool(chunks);
    let held: Vec<_> = std::iter::from_fn(|| pool.alloc_netmem_direct()).collect();
    assert_eq!(held.len(), chunks);
    (pool, held)
}

fn ring(c: &mut Criterion) {
    let (mut pool, held) = drained_pool(64);
    let recycler = pool.recycler();
    let mut n = held[0];
    c.bench_function("page_pool/ring/single", |b| {
        b.iter(|| {
            recycler.recycle(black_box(n));
            n = pool.alloc_netmem_direct().expect("netmem");
        })
    });

    let (mut pool, mut held) = drained_pool(64);
    let recycler = pool.recycler();
    c.bench_function("page_pool/ring/batch64", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let start = Instant::now();
                for &n in &held {
                    recycler.recycle(black_box(n));
                }
                for slot in held.iter_mut() {
                    *slot = pool.alloc_netmem_direct().expect("netmem");
                }
                total += start.elapsed();
                done += 64;
            }
            // Scale to the pairs asked for (iters is rounded up to a batch).
            let scaled = total.as_nanos() * u128::from(iters) / u128::from(done);
            Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
        })
    });
}

fn frag(c: &mut Criterion) {
    let mut pool = pool(1024);
    c.bench_function("page_pool/frag", |b| {
        b.iter(|| {
            let (n, off) = pool.alloc_frag_direct(black_box(1500)).expect("frag");
            black_box(off);
            pool.put_netmem_direct(n);
        })
    });
}

/// Private, so the `pub fn` the macro generates needs no doc.
mod group {
    use super::{direct, frag, ring};
    criterion::criterion_group!(benches, direct, ring, frag);
}
criterion_main!(group::benches);
