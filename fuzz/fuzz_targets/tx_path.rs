// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! (b) The TX path: `TxPath::process` over a synthetic guest memory with a random
//! descriptor table and avail ring, into a scripted uplink (which may accept, hold in
//! flight, block, refuse or fail each packet), then `finish`.
//!
//! Input: see `vnm_fuzz::rig` (ring geometry, features, rounds, uplink script, memory
//! image).
//! Checks, always: no panic; no more used entries than popped heads, no more popped
//! heads than the ring holds; nothing left in flight after `finish`. When the run
//! cannot have rewritten anything the model read (see `vnm_fuzz::model`): the uplink
//! saw exactly the packets the model expects, in order (header and bytes; a blocked
//! packet is retried first); every other popped chain is counted under its reason;
//! the packet, byte, EAGAIN and uplink-drop counters match the uplink's answers; every
//! popped head with a valid index is returned exactly once, with length 0, and the
//! used index is published.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_netmem::datapath::tx::{TxPath, MAX_TX_FRAME};
use vhost_netmem::metrics::QueueMetrics;
use vhost_netmem::netmem::GuestPageMap;
use vhost_netmem::uplink::SendStatus;
use vhost_netmem::virtio::{ChainError, Features, VirtioNetHdr, VNET_HDR_LEN};
use vm_memory::{Bytes, GuestAddress};
use vnm_fuzz::memory::{self, GuestMem};
use vnm_fuzz::model::{self, sorted, Ranges, RingGeom};
use vnm_fuzz::rig::RingInput;
use vnm_fuzz::uplink::{TxAnswer, TxUplink};

/// What the model expects the TX path to do with one chain.
#[derive(Debug)]
enum Expect {
    Send {
        hdr: VirtioNetHdr,
        pkt: Vec<u8>,
    },
    /// Dropped and counted under this counter.
    Drop(&'static str),
}

fn classify(
    mem: &GuestMem,
    map: &GuestPageMap,
    geom: &RingGeom,
    head: u16,
    features: Features,
    reads: &mut Ranges,
) -> Expect {
    let segs = match model::walk(mem, map, geom, head, reads) {
        Ok(s) => s,
        Err(ChainError::Wraps { .. }) => return Expect::Drop("tx_drop_bad_memory"),
        Err(_) => return Expect::Drop("tx_drop_bad_chain"),
    };
    if segs.iter().any(|s| s.write) {
        return Expect::Drop("tx_drop_bad_direction");
    }
    let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    if total > (MAX_TX_FRAME + VNET_HDR_LEN) as u64 {
        return Expect::Drop("tx_drop_oversized");
    }
    for s in &segs {
        reads.add(s.gpa, u64::from(s.len));
    }
    let in_memory = segs.iter().all(|s| mem.contains(s.gpa, u64::from(s.len)));
    if !in_memory {
        return Expect::Drop("tx_drop_bad_memory");
    }
    if total < VNET_HDR_LEN as u64 {
        return Expect::Drop("tx_drop_bad_header");
    }
    let mut bytes = Vec::new();
    for s in &segs {
        let at = bytes.len();
        bytes.resize(at + s.len as usize, 0);
        map.mem()
            .read_slice(&mut bytes[at..], GuestAddress(s.gpa))
            .expect("the model checked the range");
    }
    let hdr = VirtioNetHdr::from_bytes(bytes[..VNET_HDR_LEN].try_into().expect("12 bytes"));
    let pkt = bytes.split_off(VNET_HDR_LEN);
    if hdr.validate_tx(features, pkt.len()).is_err() {
        return Expect::Drop("tx_drop_bad_header");
    }
    Expect::Send { hdr, pkt }
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

    // The model's view, before the run.
    let mut reads = Ranges::default();
    let avail = model::avail_model(mem, &map, &geom, inp.next_avail, &mut reads);
    let expect: Vec<Expect> = avail
        .heads
        .iter()
        .map(|&h| classify(mem, &map, &geom, h, features, &mut reads))
        .collect();
    let mut writes = Ranges::default();
    let (used_at, used_len) = geom.used_range();
    writes.add(used_at, used_len);
    let used_ok = mem.in_one_region(used_at, used_len);
    let clean = !reads.overlaps(&writes);

    let m = QueueMetrics::default();
    let mut up = TxUplink::new(&inp.script);
    let mut tx = TxPath::default();
    for _ in 0..inp.rounds() {
        tx.process(&mut ring, &map, &mut up, features, &m);
        tx.poll_in_flight(&mut ring, &map, &mut up, &m);
    }
    up.finishing = true;
    tx.finish(&mut ring, &map, &mut up, &m);
    assert_eq!(tx.in_flight(), 0, "chains still in flight after finish");

    let (end_avail, end_used) = ring.indices();
    if vnm_fuzz::debug() {
        eprintln!("model: {avail:?}\nchains: {expect:?}\nclean: {clean} used_ok: {used_ok}");
        eprintln!(
            "uplink: {:?}\nmetrics: {:?}",
            up.sent
                .iter()
                .map(|s| (s.pkt.len(), s.answer))
                .collect::<Vec<_>>(),
            m.snapshot()
        );
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
        assert!(up.sent.is_empty());
        return;
    }
    let popped = usize::from(popped);
    assert!(
        popped <= expect.len(),
        "popped beyond the readable avail entries"
    );

    // The uplink saw the model's packets, in order; drops in between.
    let mut k = 0;
    let mut drops: Vec<&'static str> = Vec::new();
    let skip_drops = |k: &mut usize, drops: &mut Vec<&'static str>| {
        while let Some(Expect::Drop(why)) = expect.get(*k) {
            drops.push(why);
            *k += 1;
        }
    };
    for s in &up.sent {
        skip_drops(&mut k, &mut drops);
        match expect.get(k) {
            Some(Expect::Send { hdr, pkt }) => {
                assert_eq!(
                    &s.hdr, hdr,
                    "header of the packet of head {}",
                    avail.heads[k]
                );
                assert!(
                    &s.pkt == pkt,
                    "bytes of the packet of head {}",
                    avail.heads[k]
                );
            }
            other => panic!("uplink got a packet, the model expected {other:?}"),
        }
        if s.answer != TxAnswer::Status(SendStatus::WouldBlock) {
            k += 1;
        }
    }
    let blocked = up
        .sent
        .last()
        .is_some_and(|s| s.answer == TxAnswer::Status(SendStatus::WouldBlock));
    if blocked {
        assert_eq!(
            k, popped,
            "a blocked packet's chain must stay on the avail side"
        );
    } else {
        skip_drops(&mut k, &mut drops);
        assert_eq!(k, expect.len(), "ring not drained");
        assert_eq!(popped, expect.len(), "ring not drained");
    }
    for name in [
        "tx_drop_bad_chain",
        "tx_drop_bad_memory",
        "tx_drop_bad_direction",
        "tx_drop_bad_header",
        "tx_drop_oversized",
    ] {
        let want = drops.iter().filter(|d| **d == name).count() as u64;
        assert_eq!(counter(&m, name), want, "{name}");
    }
    let count =
        |f: &dyn Fn(TxAnswer) -> bool| up.sent.iter().filter(|s| f(s.answer)).count() as u64;
    let went = |a: TxAnswer| {
        matches!(
            a,
            TxAnswer::Status(SendStatus::Sent) | TxAnswer::Status(SendStatus::InFlight)
        )
    };
    let went_bytes: u64 = up
        .sent
        .iter()
        .filter(|s| went(s.answer))
        .map(|s| s.pkt.len() as u64)
        .sum();
    let is = |st: SendStatus| move |a: TxAnswer| a == TxAnswer::Status(st);
    assert_eq!(counter(&m, "tx_packets"), count(&went));
    assert_eq!(counter(&m, "tx_bytes"), went_bytes);
    assert_eq!(counter(&m, "tx_eagain"), count(&is(SendStatus::WouldBlock)));
    assert_eq!(
        counter(&m, "tx_drop_uplink_down"),
        count(&is(SendStatus::Down))
    );
    assert_eq!(
        counter(&m, "tx_drop_uplink"),
        count(&|a| a == TxAnswer::Status(SendStatus::Dropped) || a == TxAnswer::Error)
    );

    // Every popped chain with a valid head went back once, with length 0.
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
        assert!(used.iter().all(|e| e.1 == 0), "TX used length not 0");
        if !used.is_empty() {
            let idx: u16 = map.mem().read_obj(GuestAddress(geom.used + 2)).unwrap_or(0);
            assert_eq!(idx, end_used, "used index not published");
        }
    }
});
