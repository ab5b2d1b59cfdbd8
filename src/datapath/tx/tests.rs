// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `TxPath::process` over a driver ring in a test guest and a scripted uplink: chain
//! shapes, every drop reason, a blocked or zero-copy uplink, batching.

use std::time::Instant;

use vm_memory::GuestAddress;

use super::*;
use crate::datapath::ring::{RingFault, RingSetup};
use crate::datapath::test_guest::driver::{
    Buf, Desc, SplitRing, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
};
use crate::datapath::test_guest::{
    assert_counters, pattern, Answer, Rig, TestGuest, HOLE_GPA, MEM_END, REGIONS,
};
use crate::virtio::features::{
    SUPPORTED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4,
};
use crate::virtio::header::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4,
};

/// Nothing but VERSION_1 acked: no offloads.
const PLAIN: Features = Features::from_bits(1 << VIRTIO_F_VERSION_1);

fn all() -> Features {
    Features::from_bits(SUPPORTED)
}

/// A TX queue: the rig and the path under test.
struct Tx {
    r: Rig,
    tx: TxPath,
    features: Features,
}

impl Tx {
    fn new(size: u16, features: Features) -> Self {
        Self::with(size, features, |_| {})
    }

    fn with(size: u16, features: Features, tweak: impl FnOnce(&mut RingSetup)) -> Self {
        Tx {
            r: Rig::new(size, tweak),
            tx: TxPath::default(),
            features,
        }
    }

    fn process(&mut self) -> TxOutcome {
        let r = &mut self.r;
        self.tx
            .process(&mut r.dev, &r.g.map, &mut r.up, self.features, &r.m)
    }

    /// A device-readable buffer holding `bytes`, in `region`.
    fn data(&self, region: usize, bytes: &[u8]) -> Buf {
        let a = self.r.g.buf(region, bytes.len());
        self.r.g.write(a, bytes);
        Buf::ro(a, bytes.len())
    }

    /// A buffer holding the header.
    fn hdr(&self, h: VirtioNetHdr) -> Buf {
        self.data(0, &h.to_bytes())
    }

    /// Post `header + payload` as one chain split at the given lengths (the rest in
    /// a last buffer); returns the head.
    fn post_split(&mut self, h: VirtioNetHdr, payload: &[u8], cuts: &[usize]) -> u16 {
        let all = [&h.to_bytes()[..], payload].concat();
        let mut bufs = Vec::new();
        let mut at = 0;
        for &n in cuts {
            bufs.push(self.data(1, &all[at..at + n]));
            at += n;
        }
        if at < all.len() {
            bufs.push(self.data(1, &all[at..]));
        }
        self.r.post(&bufs)
    }

    /// The packets the uplink took, as (header, bytes).
    fn taken(&self) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        self.r
            .up
            .taken()
            .into_iter()
            .map(|s| (s.hdr, s.bytes.clone()))
            .collect()
    }

    /// `post` a chain, process, and expect it dropped for `counter`: the uplink saw
    /// nothing, the chain came back empty, and a good chain after it still goes.
    fn expect_drop(&mut self, bufs: &[Buf], counter: &str) {
        let head = self.r.post(bufs);
        assert_eq!(self.process(), TxOutcome::Drained);
        assert!(self.r.up.sends.is_empty(), "{counter}: uplink got a packet");
        assert_eq!(self.r.used_heads(), vec![(head, 0)], "{counter}");
        assert_counters(
            &self.r.m,
            &[(counter, 1), ("tx_batches", 1), ("notifications", 1)],
        );
        let good = [self.hdr(VirtioNetHdr::default()), self.data(0, b"ok")];
        let head = self.r.post(&good);
        assert_eq!(self.process(), TxOutcome::Drained);
        assert_eq!(
            self.taken(),
            vec![(VirtioNetHdr::default(), b"ok".to_vec())]
        );
        assert_eq!(self.r.used_heads(), vec![(head, 0)]);
        assert_eq!(self.r.dev.fault(), None);
    }
}

fn csum_hdr() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..Default::default()
    }
}

fn tso_hdr() -> VirtioNetHdr {
    VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        gso_size: 1448,
        hdr_len: 54,
        csum_offset: 16,
        ..csum_hdr()
    }
}

#[test]
fn header_in_its_own_buffer() {
    let mut t = Tx::new(8, PLAIN);
    let payload = pattern(100, 1);
    let bufs = [t.hdr(VirtioNetHdr::default()), t.data(1, &payload)];
    let head = t.r.post(&bufs);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(VirtioNetHdr::default(), payload.clone())]);
    assert_eq!(t.r.up.sends[0].frags, 1);
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    let p = bufs[1];
    assert_eq!(
        t.r.g.read(GuestAddress(p.addr), payload.len()),
        payload,
        "TX wrote to a guest buffer"
    );
    assert_eq!(t.r.calls(), 1);
    assert!(t.r.up.flushes >= 1, "the batch was not flushed");
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 1),
            ("tx_bytes", 100),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn header_split_across_buffers() {
    let mut t = Tx::new(8, all());
    let payload = pattern(300, 2);
    // 3 + 4 + 5 header bytes, the last buffer also starting the payload.
    let head = t.post_split(csum_hdr(), &payload, &[3, 4, 5 + 40]);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(csum_hdr(), payload)]);
    assert_eq!(t.r.up.sends[0].frags, 2, "40 bytes, then the rest");
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 1),
            ("tx_bytes", 300),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn header_and_payload_in_one_buffer() {
    let mut t = Tx::new(8, all());
    let payload = pattern(1500, 3);
    let head = t.post_split(csum_hdr(), &payload, &[]);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(csum_hdr(), payload)]);
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 1),
            ("tx_bytes", 1500),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn header_alone_is_an_empty_packet() {
    let mut t = Tx::new(8, PLAIN);
    let head = t.post_split(VirtioNetHdr::default(), &[], &[]);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(VirtioNetHdr::default(), Vec::new())]);
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
}

#[test]
fn one_buffer_straddling_two_regions() {
    let mut t = Tx::new(8, all());
    let payload = pattern(200, 4);
    let bytes = [&csum_hdr().to_bytes()[..], &payload].concat();
    // The header's last 6 bytes and the payload are in region 1, the rest in region 0.
    let at = GuestAddress(REGIONS[1].0 - 6);
    t.r.g.write(at, &bytes);
    let head = t.r.post(&[Buf::ro(at, bytes.len())]);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(csum_hdr(), payload)]);
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    // Payload straddling: one frag per region.
    let payload = pattern(200, 5);
    let at = GuestAddress(REGIONS[1].0 - 100);
    t.r.g.write(at, &payload);
    let bufs = [t.hdr(VirtioNetHdr::default()), Buf::ro(at, 200)];
    t.r.post(&bufs);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.up.sends[1].bytes, payload);
    assert_eq!(t.r.up.sends[1].frags, 2);
}

#[test]
fn many_buffers() {
    let mut t = Tx::new(32, PLAIN);
    let payload = pattern(24 * 37, 6);
    let cuts: Vec<usize> = std::iter::once(12).chain([37; 23]).collect();
    let head = t.post_split(VirtioNetHdr::default(), &payload, &cuts);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(VirtioNetHdr::default(), payload)]);
    assert_eq!(t.r.up.sends[0].frags, 24, "beyond the inline frags");
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 1),
            ("tx_bytes", 24 * 37),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn indirect_table() {
    let mut t = Tx::with(8, all(), |s| s.indirect = true);
    let payload = pattern(500, 7);
    let bufs = [
        t.hdr(csum_hdr()),
        t.data(1, &payload[..100]),
        t.data(0, &payload[100..]),
    ];
    let table = t.r.g.buf(1, 16 * bufs.len());
    let head = t.r.drv.add_indirect(&t.r.g, table, &bufs);
    t.r.drv.publish(&t.r.g);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(csum_hdr(), payload)]);
    assert_eq!(t.r.up.sends[0].frags, 2);
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 1),
            ("tx_bytes", 500),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn indirect_table_not_negotiated() {
    let mut t = Tx::new(8, all());
    let bufs = [t.hdr(VirtioNetHdr::default()), t.data(1, b"payload")];
    let table = t.r.g.buf(1, 32);
    let head = t.r.drv.add_indirect(&t.r.g, table, &bufs);
    t.r.drv.publish(&t.r.g);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert!(t.r.up.sends.is_empty());
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    assert_counters(
        &t.r.m,
        &[
            ("tx_drop_bad_chain", 1),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn malformed_chains_are_bad_chains() {
    // A loop.
    let mut t = Tx::new(8, PLAIN);
    let h = t.hdr(VirtioNetHdr::default());
    let d = |b: Buf, flags: u16, next: u16| Desc {
        addr: b.addr,
        len: b.len,
        flags,
        next,
    };
    let head = t.r.drv.add_raw(
        &t.r.g,
        &[d(h, VRING_DESC_F_NEXT, 1), d(h, VRING_DESC_F_NEXT, 0)],
    );
    t.r.drv.publish(&t.r.g);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    assert_counters(
        &t.r.m,
        &[
            ("tx_drop_bad_chain", 1),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );

    // A zero-length buffer.
    let mut t = Tx::new(8, PLAIN);
    let bufs = [
        t.hdr(VirtioNetHdr::default()),
        Buf::ro(GuestAddress(0x1000), 0),
        t.data(0, b"x"),
    ];
    t.expect_drop(&bufs, "tx_drop_bad_chain");

    // An indirect table outside guest memory.
    let mut t = Tx::with(8, PLAIN, |s| s.indirect = true);
    let head = t.r.drv.add_raw(
        &t.r.g,
        &[Desc {
            addr: HOLE_GPA,
            len: 32,
            flags: VRING_DESC_F_INDIRECT,
            next: 0,
        }],
    );
    t.r.drv.publish(&t.r.g);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);
    assert_eq!(t.r.m.tx_drop_bad_chain.get(), 1);
}

#[test]
fn a_head_beyond_the_ring_cannot_be_returned() {
    let mut t = Tx::new(8, PLAIN);
    t.r.post(&[t.hdr(VirtioNetHdr::default())]);
    // The guest overwrites the avail entry with an impossible head.
    let (_, avail, _) = t.r.drv.addresses();
    t.r.g.write(GuestAddress(avail.0 + 4), &99u16.to_le_bytes());
    assert_eq!(t.process(), TxOutcome::Drained);
    assert!(t.r.up.sends.is_empty());
    assert_eq!(t.r.drv.used_idx(&t.r.g), 0, "nothing to return");
    assert_eq!(t.r.dev.fault(), None);
    assert_counters(&t.r.m, &[("tx_drop_bad_chain", 1), ("tx_batches", 1)]);
}

#[test]
fn buffers_outside_guest_memory_are_bad_memory() {
    type Chain = fn(&Tx) -> Vec<Buf>;
    let cases: [(&str, Chain); 5] = [
        ("payload in the hole", |t| {
            vec![
                t.hdr(VirtioNetHdr::default()),
                Buf::ro(GuestAddress(HOLE_GPA), 100),
            ]
        }),
        ("header in the hole", |t| {
            vec![Buf::ro(GuestAddress(HOLE_GPA), 12), t.data(0, b"payload")]
        }),
        ("header and payload in the hole", |_| {
            vec![Buf::ro(GuestAddress(HOLE_GPA), 112)]
        }),
        ("payload running off the end of memory", |t| {
            vec![
                t.hdr(VirtioNetHdr::default()),
                Buf::ro(GuestAddress(MEM_END - 50), 100),
            ]
        }),
        ("buffer wrapping the address space", |t| {
            vec![
                t.hdr(VirtioNetHdr::default()),
                Buf::ro(GuestAddress(u64::MAX - 4), 10),
            ]
        }),
    ];
    for (what, bufs) in cases {
        let mut t = Tx::new(8, PLAIN);
        let bufs = bufs(&t);
        eprintln!("case: {what}");
        t.expect_drop(&bufs, "tx_drop_bad_memory");
    }
}

#[test]
fn a_device_writable_buffer_is_bad_direction() {
    let mut t = Tx::new(8, PLAIN);
    let p = t.r.g.buf(1, 100);
    let bufs = [t.hdr(VirtioNetHdr::default()), Buf::wo(p, 100)];
    t.expect_drop(&bufs, "tx_drop_bad_direction");
}

#[test]
fn a_chain_shorter_than_the_header_is_bad_header() {
    let mut t = Tx::new(8, PLAIN);
    let bufs = [t.data(0, &[0; 8])];
    t.expect_drop(&bufs, "tx_drop_bad_header");
    let mut t = Tx::new(8, PLAIN);
    let bufs = [t.data(0, &[0; 5]), t.data(1, &[0; 6])];
    t.expect_drop(&bufs, "tx_drop_bad_header");
}

#[test]
fn headers_are_checked_against_the_acked_features() {
    let unknown_flag = VirtioNetHdr {
        flags: 0x80,
        ..Default::default()
    };
    let ecn = VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
        ..tso_hdr()
    };
    let csum_only = Features::from_bits(PLAIN.bits() | 1 << VIRTIO_NET_F_CSUM);
    let tso = Features::from_bits(csum_only.bits() | 1 << VIRTIO_NET_F_HOST_TSO4);
    let payload = pattern(3000, 8);
    for (what, hdr, features, ok) in [
        ("unknown flag", unknown_flag, all(), false),
        ("NEEDS_CSUM without CSUM", csum_hdr(), PLAIN, false),
        ("NEEDS_CSUM with CSUM", csum_hdr(), csum_only, true),
        ("TSO4 without HOST_TSO4", tso_hdr(), csum_only, false),
        ("TSO4 with HOST_TSO4", tso_hdr(), tso, true),
        ("TSO4 with ECN without HOST_ECN", ecn, tso, false),
        ("TSO4 with ECN, everything acked", ecn, all(), true),
    ] {
        let mut t = Tx::new(8, features);
        let bufs = [t.hdr(hdr), t.data(1, &payload)];
        if ok {
            let head = t.r.post(&bufs);
            assert_eq!(t.process(), TxOutcome::Drained);
            assert_eq!(t.taken(), vec![(hdr, payload.clone())], "{what}");
            assert_eq!(t.r.used_heads(), vec![(head, 0)]);
            assert_eq!(t.r.m.tx_drop_bad_header.get(), 0, "{what}");
        } else {
            eprintln!("case: {what}");
            t.expect_drop(&bufs, "tx_drop_bad_header");
        }
    }
}

#[test]
fn the_largest_frame_goes_one_byte_more_is_oversized() {
    let mut t = Tx::new(8, PLAIN);
    let payload = pattern(MAX_TX_FRAME, 9);
    let head = t.post_split(VirtioNetHdr::default(), &payload, &[]);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(VirtioNetHdr::default(), payload)]);
    assert_eq!(t.r.used_heads(), vec![(head, 0)]);

    let mut t = Tx::new(8, PLAIN);
    let bufs = [
        t.hdr(VirtioNetHdr::default()),
        t.data(1, &pattern(MAX_TX_FRAME - 100, 10)),
        t.data(0, &pattern(101, 11)),
    ];
    t.expect_drop(&bufs, "tx_drop_oversized");
}

#[test]
fn would_block_gives_the_chain_back_and_loses_nothing() {
    let mut t = Tx::new(8, PLAIN);
    t.r.up.answers.extend([
        Answer::Status(SendStatus::Sent),
        Answer::Status(SendStatus::WouldBlock),
    ]);
    let payloads: Vec<Vec<u8>> = (0..3u8).map(|i| pattern(60 + usize::from(i), i)).collect();
    let heads: Vec<u16> = payloads
        .iter()
        .map(|p| {
            let bufs = [t.hdr(VirtioNetHdr::default()), t.data(1, p)];
            t.r.post(&bufs)
        })
        .collect();
    assert_eq!(t.process(), TxOutcome::Blocked);
    assert_eq!(t.r.used_heads(), vec![(heads[0], 0)]);
    assert_eq!(t.r.calls(), 1);
    assert_eq!(
        t.r.dev.available(&t.r.g.map, &t.r.m),
        Some(2),
        "the blocked chain is available again"
    );
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 1),
            ("tx_bytes", 60),
            ("tx_batches", 1),
            ("tx_eagain", 1),
            ("notifications", 1),
        ],
    );
    // The uplink has room again: the rest goes, in order.
    assert_eq!(t.process(), TxOutcome::Drained);
    let sent: Vec<Vec<u8>> = t.taken().into_iter().map(|(_, b)| b).collect();
    assert_eq!(sent, payloads);
    assert_eq!(t.r.used_heads(), vec![(heads[1], 0), (heads[2], 0)]);
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 3),
            ("tx_bytes", 60 + 61 + 62),
            ("tx_batches", 2),
            ("tx_eagain", 1),
            ("notifications", 2),
        ],
    );
}

#[test]
fn refused_and_failed_sends_are_uplink_drops() {
    let mut t = Tx::new(8, PLAIN);
    t.r.up.answers.extend([
        Answer::Status(SendStatus::Dropped),
        Answer::Fail,
        Answer::Status(SendStatus::Sent),
    ]);
    let heads: Vec<u16> = (0..3)
        .map(|_| {
            let bufs = [t.hdr(VirtioNetHdr::default()), t.data(1, &[7; 50])];
            t.r.post(&bufs)
        })
        .collect();
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.up.sends.len(), 3);
    assert_eq!(
        t.r.used_heads(),
        heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>()
    );
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 1),
            ("tx_bytes", 50),
            ("tx_batches", 1),
            ("tx_drop_uplink", 2),
            ("notifications", 1),
        ],
    );
}

#[test]
fn budget_after_tx_batch_chains() {
    let mut t = Tx::new(512, PLAIN);
    let bytes = [&VirtioNetHdr::default().to_bytes()[..], &[1; 10]].concat();
    let bufs = [t.data(1, &bytes)];
    for _ in 0..=TX_BATCH {
        t.r.drv.add_chain(&t.r.g, &bufs);
    }
    t.r.drv.publish(&t.r.g);
    assert_eq!(t.process(), TxOutcome::Budget);
    assert_eq!(t.r.up.sends.len(), TX_BATCH);
    assert_eq!(t.r.used().len(), TX_BATCH);
    assert_eq!(t.r.calls(), 1, "one interrupt per batch");
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.up.sends.len(), TX_BATCH + 1);
    assert_eq!(t.r.used().len(), 1);
    // Exactly a batch: drained, not out of budget.
    for _ in 0..TX_BATCH {
        t.r.drv.add_chain(&t.r.g, &bufs);
    }
    t.r.drv.publish(&t.r.g);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.used().len(), TX_BATCH);
    let n = u64::try_from(2 * TX_BATCH + 1).unwrap();
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", n),
            ("tx_bytes", 10 * n),
            ("tx_batches", 3),
            ("notifications", 3),
        ],
    );
}

#[test]
fn nothing_to_do_counts_nothing() {
    let mut t = Tx::new(8, PLAIN);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.calls(), 0);
    assert_counters(&t.r.m, &[]);
}

#[test]
fn a_broken_ring_is_drained_and_sends_nothing() {
    let mut t = Tx::new(8, PLAIN);
    t.r.post(&[t.hdr(VirtioNetHdr::default())]);
    t.r.drv.set_avail_idx_raw(&t.r.g, 100);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.dev.fault(), Some(RingFault::Broken));
    assert!(t.r.up.sends.is_empty());
    assert_counters(&t.r.m, &[("ring_errors", 1)]);
}

/// Post `n` one-packet chains with distinct payloads; returns their heads.
fn post_packets(t: &mut Tx, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let bufs = [
                t.hdr(VirtioNetHdr::default()),
                t.data(1, &pattern(20, u8::try_from(i).unwrap())),
            ];
            t.r.post(&bufs)
        })
        .collect()
}

#[test]
fn in_flight_chains_return_when_complete_in_send_order() {
    let mut t = Tx::new(8, PLAIN);
    t.r.up.answers.extend([
        Answer::Status(SendStatus::InFlight),
        Answer::Status(SendStatus::InFlight),
        Answer::Status(SendStatus::Sent),
        Answer::Status(SendStatus::InFlight),
    ]);
    let heads = post_packets(&mut t, 4);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.up.sends.len(), 4);
    assert_eq!(t.r.used_heads(), vec![(heads[2], 0)], "only the copied one");
    assert_eq!(t.tx.in_flight(), 3);
    // Nothing completed: nothing comes back.
    let r = &mut t.r;
    t.tx.poll_in_flight(&mut r.dev, &r.g.map, &mut r.up, &r.m);
    assert_eq!(t.r.used_heads(), vec![]);
    // The first completes.
    t.r.up.complete(1);
    let r = &mut t.r;
    t.tx.poll_in_flight(&mut r.dev, &r.g.map, &mut r.up, &r.m);
    assert_eq!(t.r.used_heads(), vec![(heads[0], 0)]);
    assert_eq!(t.tx.in_flight(), 2);
    // The rest complete; the next batch returns them.
    t.r.up.complete(2);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.used_heads(), vec![(heads[1], 0), (heads[3], 0)]);
    assert_eq!(t.tx.in_flight(), 0);
    assert_eq!(t.r.up.in_flight, 0);
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 4),
            ("tx_bytes", 80),
            ("tx_batches", 1),
            ("notifications", 3),
        ],
    );
}

#[test]
fn finish_returns_the_chains_in_flight() {
    // Completed while stopping: returned at once, nothing forgotten.
    let mut t = Tx::new(8, PLAIN);
    t.r.up
        .answers
        .extend([Answer::Status(SendStatus::InFlight); 2]);
    let heads = post_packets(&mut t, 2);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.used_heads(), vec![]);
    t.r.up.complete(2);
    let started = Instant::now();
    let r = &mut t.r;
    t.tx.finish(&mut r.dev, &r.g.map, &mut r.up, &r.m);
    assert!(started.elapsed() < IN_FLIGHT_WAIT);
    assert_eq!(t.r.used_heads(), vec![(heads[0], 0), (heads[1], 0)]);
    assert_eq!(t.r.up.forgotten, 0);

    // Never completed: returned after the wait, and the uplink forgets them.
    let mut t = Tx::new(8, PLAIN);
    t.r.up
        .answers
        .extend([Answer::Status(SendStatus::InFlight); 2]);
    let heads = post_packets(&mut t, 2);
    assert_eq!(t.process(), TxOutcome::Drained);
    let started = Instant::now();
    let r = &mut t.r;
    t.tx.finish(&mut r.dev, &r.g.map, &mut r.up, &r.m);
    assert!(started.elapsed() >= IN_FLIGHT_WAIT);
    assert_eq!(t.r.used_heads(), vec![(heads[0], 0), (heads[1], 0)]);
    assert_eq!(t.r.up.forgotten, 2);
    assert_eq!(t.tx.in_flight(), 0);
    assert_eq!(t.r.calls(), 1);
}

#[test]
fn a_split_ring_started_near_the_wrap_transmits_across_it() {
    let g = TestGuest::new();
    let mut drv = SplitRing::new(&g, 0, 16);
    drv.start_at(&g, 65533);
    let mut t = Tx {
        r: Rig::over(g, drv, |_| {}),
        tx: TxPath::default(),
        features: PLAIN,
    };
    let heads = post_packets(&mut t, 6);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.r.up.sends.len(), 6);
    assert_eq!(
        t.r.used_heads(),
        heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>()
    );
    assert_eq!(t.r.dev.indices(), (3, 3));
}

#[test]
fn an_avail_ring_entry_outside_guest_memory_stops_the_ring() {
    // flags and idx are the last four bytes of guest memory: the entries are beyond.
    let mut t = Tx::with(8, PLAIN, |s| s.avail = MEM_END - 4);
    t.r.g.write(GuestAddress(MEM_END - 2), &1u16.to_le_bytes());
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(
        t.r.dev.fault(),
        Some(RingFault::Broken),
        "the worker stops TX"
    );
    assert!(t.r.up.sends.is_empty());
    assert_counters(&t.r.m, &[("ring_errors", 1)]);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_counters(&t.r.m, &[("ring_errors", 1)]);
}

/// A limiter of `ops` packets and `bytes` bytes per 100 ms, full at time 0.
fn limiter(ops: Option<u64>, bytes: Option<u64>) -> crate::ratelimit::Limiter {
    use crate::ratelimit::{BucketConfig, LimitConfig, Limiter};
    let b = |size| BucketConfig {
        size,
        one_time_burst: 0,
        refill_time_ms: 100,
    };
    Limiter::new(
        &LimitConfig {
            bandwidth: bytes.map(b),
            ops: ops.map(b),
        },
        0,
    )
    .unwrap()
}

#[test]
fn a_dry_limit_leaves_the_chains_on_the_ring_and_says_how_long_to_wait() {
    let mut t = Tx::new(16, PLAIN);
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| pattern(100, i)).collect();
    let heads: Vec<u16> = payloads
        .iter()
        .map(|p| {
            let bufs = [t.hdr(VirtioNetHdr::default()), t.data(1, p)];
            t.r.post(&bufs)
        })
        .collect();
    // 2 packets per 100 ms: one more every 50 ms.
    let mut l = limiter(Some(2), None);
    let r = &mut t.r;
    let o =
        t.tx.process_gated(&mut r.dev, &r.g.map, &mut r.up, t.features, &r.m, &mut l);
    assert_eq!(o, TxOutcome::Throttled(50_000_000));
    assert_eq!(t.r.used_heads(), vec![(heads[0], 0), (heads[1], 0)]);
    assert_eq!(
        t.r.dev.available(&t.r.g.map, &t.r.m),
        Some(3),
        "the throttled chains wait on the ring"
    );
    assert_counters(
        &t.r.m,
        &[
            ("tx_packets", 2),
            ("tx_bytes", 200),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
    // Still dry: a look moves nothing, counts no batch.
    let r = &mut t.r;
    let o =
        t.tx.process_gated(&mut r.dev, &r.g.map, &mut r.up, t.features, &r.m, &mut l);
    assert_eq!(o, TxOutcome::Throttled(50_000_000));
    assert_eq!(t.r.m.tx_batches.get(), 1);
    // 100 ms later: two more, then dry again; the rest keep their order.
    l.refill(100_000_000);
    let r = &mut t.r;
    let o =
        t.tx.process_gated(&mut r.dev, &r.g.map, &mut r.up, t.features, &r.m, &mut l);
    assert!(matches!(o, TxOutcome::Throttled(_)), "{o:?}");
    l.refill(1_000_000_000);
    let r = &mut t.r;
    let o =
        t.tx.process_gated(&mut r.dev, &r.g.map, &mut r.up, t.features, &r.m, &mut l);
    assert_eq!(o, TxOutcome::Drained);
    let sent: Vec<Vec<u8>> = t.taken().into_iter().map(|(_, b)| b).collect();
    assert_eq!(sent, payloads, "every packet went, in order, none dropped");
    assert_eq!(t.r.m.snapshot().drops(), 0);
}

#[test]
fn a_bytes_limit_charges_what_the_uplink_took_and_not_what_it_gave_back() {
    let mut t = Tx::new(8, PLAIN);
    t.r.up.answers.extend([
        Answer::Status(SendStatus::WouldBlock),
        Answer::Status(SendStatus::Sent),
    ]);
    for i in 0..2u8 {
        let bufs = [t.hdr(VirtioNetHdr::default()), t.data(1, &pattern(600, i))];
        t.r.post(&bufs);
    }
    let mut l = limiter(None, Some(1000));
    let r = &mut t.r;
    let o =
        t.tx.process_gated(&mut r.dev, &r.g.map, &mut r.up, t.features, &r.m, &mut l);
    assert_eq!(o, TxOutcome::Blocked);
    assert_eq!(
        l.bytes().unwrap().level(),
        1000,
        "a refused send is not charged"
    );
    let r = &mut t.r;
    let o =
        t.tx.process_gated(&mut r.dev, &r.g.map, &mut r.up, t.features, &r.m, &mut l);
    // 400 bytes left for a 600-byte packet: 200 more at 10 per ms.
    assert_eq!(o, TxOutcome::Throttled(20_000_000));
    assert_eq!(l.bytes().unwrap().level(), 400);
    assert_eq!(t.r.m.tx_packets.get(), 1);
}
