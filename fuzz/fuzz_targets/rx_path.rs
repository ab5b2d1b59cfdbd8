// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! (b) The RX path: `RxPath::process` over a synthetic guest memory with a random
//! descriptor table and avail ring, from a scripted uplink (packets of any length up
//! to 128 KiB, errors, nothing), with and without MRG_RXBUF, then `release`.
//!
//! Input: see `vnm_fuzz::rig` (ring geometry, features, rounds, MTU, uplink script,
//! memory image).
//! Checks, always: no panic and no hang; no more used entries than popped heads, no
//! more popped heads than the ring holds. When the run cannot have rewritten anything
//! the model read (see `vnm_fuzz::model`): each popped chain the model refuses is
//! counted under its reason; the uplink was always offered exactly the buffers the
//! path accounted for, and the packet, byte, truncation and error counters match what
//! it delivered; after `release` every popped head with a valid index is returned
//! exactly once, no used length exceeds its chain's writable capacity, and the used
//! lengths add up to the delivered packets.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use vhost_netmem::datapath::rx::RxPath;
use vhost_netmem::metrics::QueueMetrics;
use vhost_netmem::netmem::GuestPageMap;
use vhost_netmem::virtio::{ChainError, VNET_HDR_LEN};
use vnm_fuzz::memory::{self, GuestMem};
use vnm_fuzz::model::{self, sorted, Ranges, RingGeom};
use vnm_fuzz::rig::RingInput;
use vnm_fuzz::uplink::RxUplink;

/// The writable capacity of a usable chain, or the counter a refused one goes under.
fn classify(
    mem: &GuestMem,
    map: &GuestPageMap,
    geom: &RingGeom,
    head: u16,
    reads: &mut Ranges,
    writes: &mut Ranges,
) -> Result<u64, &'static str> {
    let segs = match model::walk(mem, map, geom, head, reads) {
        Ok(s) => s,
        Err(ChainError::Wraps { .. }) => return Err("rx_drop_bad_memory"),
        Err(_) => return Err("rx_drop_bad_chain"),
    };
    if segs.iter().any(|s| !s.write) {
        return Err("rx_drop_bad_direction");
    }
    if !segs.iter().all(|s| mem.contains(s.gpa, u64::from(s.len))) {
        return Err("rx_drop_bad_memory");
    }
    let cap: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    if cap < VNET_HDR_LEN as u64 {
        return Err("rx_drop_short_buffer");
    }
    for s in &segs {
        writes.add(s.gpa, u64::from(s.len));
    }
    Ok(cap)
}

fn counter(m: &QueueMetrics, name: &str) -> u64 {
    m.snapshot()
        .fields()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .expect("known counter")
}

fuzz_target!(|data: &[u8]| {
    let inp = RingInput::decode(data);
    let mem = memory::layout(inp.layout);
    let map = mem.load(&inp.image);
    let Some(mut ring) = inp.ring() else {
        return;
    };
    let geom = inp.geom();
    let features = inp.features();
    let mtu = inp.mtu.max(68);

    let mut reads = Ranges::default();
    let mut writes = Ranges::default();
    let avail = model::avail_model(mem, &map, &geom, inp.next_avail, &mut reads);
    let expect: Vec<Result<u64, &'static str>> = avail
        .heads
        .iter()
        .map(|&h| classify(mem, &map, &geom, h, &mut reads, &mut writes))
        .collect();
    let (used_at, used_len) = geom.used_range();
    let mut used_ring = Ranges::default();
    used_ring.add(used_at, used_len);
    let used_ok = mem.in_one_region(used_at, used_len);
    // Nothing the model read is rewritten, and no packet lands on the used ring (which
    // is read back below).
    let clean =
        !reads.overlaps(&writes) && !reads.overlaps(&used_ring) && !writes.overlaps(&used_ring);

    let m = QueueMetrics::default();
    let mut up = RxUplink::new(&inp.script);
    let mut rx = RxPath::default();
    for _ in 0..inp.rounds() {
        rx.process(&mut ring, &map, &mut up, features, mtu, &m);
    }
    rx.release(&mut ring, &map);

    let (end_avail, end_used) = ring.indices();
    if vnm_fuzz::debug() {
        eprintln!("model: {avail:?}\nchains: {expect:?}\nclean: {clean} used_ok: {used_ok}");
        eprintln!("uplink: {:?}\nmetrics: {:?}", up.received, m.snapshot());
        eprintln!(
            "indices: {:?} used: {:?}",
            ring.indices(),
            model::used_entries(&map, &geom, inp.next_used, end_used)
        );
    }
    let popped = end_avail.wrapping_sub(inp.next_avail);
    let returned = end_used.wrapping_sub(inp.next_used);
    assert!(
        returned <= popped,
        "returned {returned} chains, popped {popped}"
    );
    if !clean {
        return;
    }
    // The guest (or a device write over its avail ring) did not add buffers meanwhile.
    assert!(
        popped <= geom.size,
        "popped {popped} heads from a ring of {}",
        geom.size
    );
    if avail.broken {
        assert_eq!((popped, counter(&m, "ring_errors")), (0, 1));
        assert!(up.received.is_empty());
        return;
    }
    let popped = usize::from(popped);
    assert!(
        popped <= expect.len(),
        "popped beyond the readable avail entries"
    );

    for name in [
        "rx_drop_bad_chain",
        "rx_drop_bad_memory",
        "rx_drop_bad_direction",
        "rx_drop_short_buffer",
    ] {
        let want = expect[..popped].iter().filter(|e| **e == Err(name)).count() as u64;
        assert_eq!(counter(&m, name), want, "{name}");
    }
    let delivered: Vec<usize> = up
        .received
        .iter()
        .filter(|r| r.len <= r.offered)
        .map(|r| r.len)
        .collect();
    assert_eq!(counter(&m, "rx_packets"), delivered.len() as u64);
    assert_eq!(
        counter(&m, "rx_drop_truncated"),
        (up.received.len() - delivered.len()) as u64
    );
    assert_eq!(
        counter(&m, "rx_bytes"),
        delivered
            .iter()
            .map(|&n| n.saturating_sub(VNET_HDR_LEN) as u64)
            .sum::<u64>()
    );
    assert_eq!(counter(&m, "rx_uplink_errors"), up.errors);

    if used_ok {
        assert!(
            ring.fault().is_none(),
            "ring broken although its used ring is in memory"
        );
        let used = model::used_entries(&map, &geom, inp.next_used, end_used);
        let want: Vec<u32> = avail.heads[..popped]
            .iter()
            .filter(|&&h| h < geom.size)
            .map(|&h| u32::from(h))
            .collect();
        let ids: Vec<u32> = used.iter().map(|e| e.0).collect();
        assert_eq!(
            sorted(&ids),
            sorted(&want),
            "used ids differ from popped heads"
        );
        let caps: HashMap<u16, u64> = avail
            .heads
            .iter()
            .zip(&expect)
            .filter_map(|(&h, e)| e.ok().map(|c| (h, c)))
            .collect();
        for &(id, len) in &used {
            let cap = u16::try_from(id).ok().and_then(|h| caps.get(&h)).copied();
            assert!(
                len == 0 || cap.is_some_and(|c| u64::from(len) <= c),
                "used length {len} for head {id} exceeds its capacity {cap:?}"
            );
        }
        let total: u64 = used.iter().map(|e| u64::from(e.1)).sum();
        assert_eq!(total, delivered.iter().map(|&n| n as u64).sum::<u64>());
    }
});
