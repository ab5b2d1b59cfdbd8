// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `RxPath::process` over a driver ring in a test guest and an uplink that delivers
//! scripted packets: one chain per packet, MRG_RXBUF gathering, the stash, giving
//! chains back, too few or hostile buffers, notification suppression.

use vm_memory::GuestAddress;

use super::*;
use crate::datapath::ring::RingSetup;
use crate::datapath::test_guest::driver::{Buf, Desc, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use crate::datapath::test_guest::{assert_counters, pattern, Rig, HOLE_GPA, MEM_END};
use crate::virtio::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_GUEST_TSO4};
use crate::virtio::VirtioNetHdr;

const MTU: u16 = 1500;

/// Nothing but VERSION_1 acked: one chain per packet.
const PLAIN: Features = Features::from_bits(1 << VIRTIO_F_VERSION_1);

/// Merged RX buffers.
const MRG: Features = Features::from_bits(PLAIN.bits() | 1 << VIRTIO_NET_F_MRG_RXBUF);

/// What the uplink puts in `num_buffers` (the device must overwrite it).
const JUNK_NUM_BUFFERS: u16 = 0xabcd;

/// A packet as the uplink delivers it: a virtio-net header, then `payload` bytes.
fn packet(payload: usize, seed: u8) -> Vec<u8> {
    let hdr = VirtioNetHdr {
        num_buffers: JUNK_NUM_BUFFERS,
        ..Default::default()
    };
    [&hdr.to_bytes()[..], &pattern(payload, seed)].concat()
}

/// `pkt` as the guest must find it: `num_buffers` set.
fn delivered(pkt: &[u8], num_buffers: u16) -> Vec<u8> {
    let mut v = pkt.to_vec();
    v[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    v
}

/// An RX queue: the rig and the path under test.
struct Rx {
    r: Rig,
    rx: RxPath,
    features: Features,
}

impl Rx {
    fn new(size: u16, features: Features) -> Self {
        Self::with(size, features, |_| {})
    }

    fn with(size: u16, features: Features, tweak: impl FnOnce(&mut RingSetup)) -> Self {
        Rx {
            r: Rig::new(size, tweak),
            rx: RxPath::default(),
            features,
        }
    }

    fn process(&mut self) -> RxOutcome {
        let r = &mut self.r;
        self.rx
            .process(&mut r.dev, &r.g.map, &mut r.up, self.features, MTU, &r.m)
    }

    fn release(&mut self) {
        self.rx.release(&mut self.r.dev, &self.r.g.map);
    }

    /// Post a chain of device-writable buffers of these lengths; returns its head.
    fn post(&mut self, lens: &[usize]) -> u16 {
        let bufs: Vec<Buf> = lens
            .iter()
            .map(|&n| Buf::wo(self.r.g.buf(1, n), n))
            .collect();
        self.r.post(&bufs)
    }

    fn deliver(&mut self, pkts: &[&Vec<u8>]) {
        self.r
            .up
            .inbound
            .extend(pkts.iter().map(|p| Ok((*p).clone())));
    }

    fn available(&mut self) -> Option<u16> {
        self.r.dev.available(&self.r.g.map, &self.r.m)
    }
}

fn len32(p: &[u8]) -> u32 {
    u32::try_from(p.len()).unwrap()
}

#[test]
fn one_chain_per_packet_without_mrg_rxbuf() {
    let mut t = Rx::new(8, PLAIN);
    let heads: Vec<u16> = (0..3).map(|_| t.post(&[2048])).collect();
    let (a, b) = (packet(100, 1), packet(200, 2));
    t.deliver(&[&a, &b]);
    assert_eq!(t.process(), RxOutcome::Drained);
    let used = t.r.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(heads[0], len32(&a)), (heads[1], len32(&b))]
    );
    assert_eq!(t.r.g.used_bytes(&used[0]), delivered(&a, 1));
    assert_eq!(t.r.g.used_bytes(&used[1]), delivered(&b, 1));
    assert_eq!(t.r.up.offered, vec![2048, 2048], "one chain per packet");
    assert_eq!(t.r.calls(), 1);
    assert_counters(
        &t.r.m,
        &[
            ("rx_packets", 2),
            ("rx_bytes", 300),
            ("rx_batches", 1),
            ("notifications", 1),
        ],
    );
    // The third chain waits, popped, for the next packet.
    assert_eq!(t.available(), Some(0));
    let c = packet(50, 3);
    t.deliver(&[&c]);
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    let used = t.r.used();
    assert_eq!(used.len(), 1);
    assert_eq!((used[0].id, used[0].len), (heads[2], len32(&c)));
    assert_eq!(t.r.g.used_bytes(&used[0]), delivered(&c, 1));
}

#[test]
fn mrg_rxbuf_spreads_a_packet_over_chains() {
    let mut t = Rx::new(8, MRG);
    let heads: Vec<u16> = (0..4).map(|_| t.post(&[1024])).collect();
    let (a, b) = (packet(1488, 1), packet(88, 2));
    t.deliver(&[&a, &b]);
    // Two packets, then the one chain left cannot hold a full-sized frame.
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    let used = t.r.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(heads[0], 1024), (heads[1], 1500 - 1024), (heads[2], 100)]
    );
    let first: Vec<u8> = [t.r.g.used_bytes(&used[0]), t.r.g.used_bytes(&used[1])].concat();
    assert_eq!(first, delivered(&a, 2));
    assert_eq!(t.r.g.used_bytes(&used[2]), delivered(&b, 1));
    // The stash offered a full-sized frame's worth each time.
    assert_eq!(t.r.up.offered, vec![2048, 2048]);
    assert_counters(
        &t.r.m,
        &[
            ("rx_packets", 2),
            ("rx_bytes", 1488 + 88),
            ("rx_batches", 1),
            ("rx_no_buffers", 1),
            ("notifications", 1),
        ],
    );
    // The unused chain is kept for the next packet, in front of newly posted ones.
    let h4 = t.post(&[1024]);
    let c = packet(1018, 3);
    t.deliver(&[&c]);
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    let used = t.r.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(heads[3], 1024), (h4, 6)]
    );
    let got: Vec<u8> = [t.r.g.used_bytes(&used[0]), t.r.g.used_bytes(&used[1])].concat();
    assert_eq!(got, delivered(&c, 2));
}

#[test]
fn num_buffers_is_written_across_a_buffer_boundary() {
    // Without MRG_RXBUF: the field's two bytes are in two buffers of one chain.
    let mut t = Rx::new(8, PLAIN);
    let head = t.post(&[11, 1000]);
    let a = packet(300, 1);
    t.deliver(&[&a]);
    t.process();
    let used = t.r.used();
    assert_eq!((used[0].id, used[0].len), (head, len32(&a)));
    assert_eq!(t.r.g.used_bytes(&used[0]), delivered(&a, 1));

    // With MRG_RXBUF, a packet over two chains.
    let mut t = Rx::new(8, MRG);
    let h0 = t.post(&[11, 1000]);
    let h1 = t.post(&[1000]);
    let a = packet(1500, 2);
    t.deliver(&[&a]);
    t.process();
    let used = t.r.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(h0, 1011), (h1, 1512 - 1011)]
    );
    let got: Vec<u8> = [t.r.g.used_bytes(&used[0]), t.r.g.used_bytes(&used[1])].concat();
    assert_eq!(got, delivered(&a, 2));
}

#[test]
fn with_gso_acked_the_stash_holds_a_64k_frame() {
    let f = Features::from_bits(MRG.bits() | 1 << VIRTIO_NET_F_GUEST_TSO4);
    let mut t = Rx::new(32, f);
    for _ in 0..20 {
        t.post(&[4096]);
    }
    let a = packet(60000, 1);
    t.deliver(&[&a]);
    t.process();
    // 17 chains of 4 KiB are the first to hold 65535 + 14 + 4 + 12 bytes.
    assert_eq!(t.r.up.offered, vec![17 * 4096]);
    let used = t.r.used();
    assert_eq!(used.len(), 15, "60012 bytes in 4 KiB chains");
    let got: Vec<u8> = used.iter().flat_map(|u| t.r.g.used_bytes(u)).collect();
    assert_eq!(got, delivered(&a, 15));
}

/// The ring's two chains came back, `heads` with 256 and 144 bytes: `a` (a 400-byte
/// packet) spread over them with `num_buffers` 2.
fn assert_spread_over_two(t: &mut Rx, heads: (u16, u16), a: &[u8]) {
    let used = t.r.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(heads.0, 256), (heads.1, 144)]
    );
    let got: Vec<u8> = [t.r.g.used_bytes(&used[0]), t.r.g.used_bytes(&used[1])].concat();
    assert_eq!(got, delivered(a, 2));
}

#[test]
fn a_ring_smaller_than_a_frame_still_gets_packets() {
    let mut t = Rx::new(2, MRG);
    let h0 = t.post(&[256]);
    let h1 = t.post(&[256]);
    let (a, b) = (packet(388, 1), packet(600, 2));
    t.deliver(&[&b, &a]);
    t.process();
    // The whole ring is 512 bytes: the 612-byte packet cannot fit, the next one can.
    assert_spread_over_two(&mut t, (h0, h1), &a);
    assert_eq!(t.r.m.rx_drop_truncated.get(), 1);
    assert_eq!(t.r.m.rx_packets.get(), 1);
}

#[test]
fn a_ring_of_multi_descriptor_chains_smaller_than_a_frame_still_gets_packets() {
    // Four descriptors, two chains of two: the stash never holds the ring's size in
    // chains, but it holds all four descriptors, and the guest has nothing more.
    let f = Features::from_bits(MRG.bits() | 1 << VIRTIO_NET_F_GUEST_TSO4);
    let mut t = Rx::new(4, f);
    let h0 = t.post(&[100, 156]);
    let h1 = t.post(&[128, 128]);
    let a = packet(388, 1);
    t.deliver(&[&a]);
    // Delivered; then the ring is empty.
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    assert_spread_over_two(&mut t, (h0, h1), &a);
    assert_eq!(t.r.m.rx_packets.get(), 1);
    // With a descriptor of the ring still the guest's, the stash waits for it.
    let mut t = Rx::new(4, f);
    t.post(&[100, 156]);
    t.post(&[256]);
    t.deliver(&[&a]);
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    assert_eq!(t.r.m.rx_packets.get(), 0);
}

#[test]
fn release_unpops_a_contiguous_stash() {
    let mut t = Rx::new(8, MRG);
    let h0 = t.post(&[1024]);
    assert_eq!(t.process(), RxOutcome::NoBuffers, "1024 bytes are too few");
    assert_eq!(t.available(), Some(0), "the chain is stashed");
    t.release();
    assert_eq!(t.available(), Some(1));
    assert_eq!(t.r.dev.indices(), (0, 0));
    t.r.dev.signal(&t.r.g.map, &t.r.m);
    assert_eq!(t.r.used(), vec![], "nothing returned");
    // The next worker pops it again.
    assert_eq!(t.r.dev.pop_head(&t.r.g.map), Some(h0));
    assert_counters(&t.r.m, &[("rx_no_buffers", 1)]);
}

#[test]
fn release_returns_a_stash_with_a_gap_empty() {
    let mut t = Rx::new(8, MRG);
    let h0 = t.post(&[1024]);
    let ro = t.r.g.buf(1, 1024);
    let h1 = t.r.post(&[Buf::ro(ro, 1024)]);
    let h2 = t.post(&[1024]);
    // Nothing to receive; the stash is h0 and h2, h1 went back as bad.
    assert_eq!(t.process(), RxOutcome::Drained);
    assert_eq!(t.r.used_heads(), vec![(h1, 0)]);
    t.release();
    assert_eq!(t.r.dev.indices(), (3, 3));
    t.r.dev.signal(&t.r.g.map, &t.r.m);
    assert_eq!(t.r.used_heads(), vec![(h0, 0), (h2, 0)]);
    assert_eq!(t.available(), Some(0), "nothing un-popped");
    assert_counters(
        &t.r.m,
        &[("rx_drop_bad_direction", 1), ("notifications", 2)],
    );
}

#[test]
fn no_buffers_leaves_the_packet_with_the_uplink() {
    let mut t = Rx::new(8, PLAIN);
    let a = packet(100, 1);
    t.deliver(&[&a]);
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    assert!(t.r.up.offered.is_empty(), "nothing to receive into");
    assert_eq!(t.r.up.inbound.len(), 1);
    assert_eq!(t.r.calls(), 0);
    assert_counters(&t.r.m, &[("rx_no_buffers", 1)]);
    // The guest posts a buffer: the packet arrives.
    let h = t.post(&[2048]);
    t.process();
    let used = t.r.used();
    assert_eq!((used[0].id, used[0].len), (h, len32(&a)));
    assert_eq!(t.r.g.used_bytes(&used[0]), delivered(&a, 1));
}

#[test]
fn a_truncated_packet_is_dropped_and_its_buffers_kept() {
    let mut t = Rx::new(8, PLAIN);
    let h = t.post(&[256]);
    let (big, fits, next) = (packet(245, 1), packet(244, 2), packet(10, 3));
    t.deliver(&[&big, &fits, &next]);
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    // 257 bytes do not fit 256: dropped; 256 bytes fill the same chain exactly.
    let used = t.r.used();
    assert_eq!(used.len(), 1);
    assert_eq!((used[0].id, used[0].len), (h, 256));
    assert_eq!(t.r.g.used_bytes(&used[0]), delivered(&fits, 1));
    assert_eq!(t.r.up.inbound.len(), 1, "the next packet waits for buffers");
    assert_counters(
        &t.r.m,
        &[
            ("rx_packets", 1),
            ("rx_bytes", 244),
            ("rx_batches", 1),
            ("rx_drop_truncated", 1),
            ("rx_no_buffers", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn packets_that_do_not_fit_count_against_the_batch_budget() {
    let mut t = Rx::new(8, PLAIN);
    t.post(&[256]);
    let big = packet(1000, 1);
    let flood: Vec<&Vec<u8>> = (0..RX_BATCH + 5).map(|_| &big).collect();
    t.deliver(&flood);
    assert_eq!(
        t.process(),
        RxOutcome::Budget,
        "the worker gets back to its loop"
    );
    assert_eq!(t.r.m.rx_drop_truncated.get(), RX_BATCH as u64);
    assert_eq!(t.r.up.inbound.len(), 5, "the rest waits for the next look");
}

#[test]
fn hostile_rx_chains_are_dropped_and_counted() {
    let mut t = Rx::new(16, PLAIN);
    let w = |addr: u64, len: u32| Desc {
        addr,
        len,
        flags: VRING_DESC_F_WRITE,
        next: 0,
    };
    let ro = t.r.g.buf(1, 2048);
    let some = t.r.g.buf(1, 64).0;
    let bad = [
        t.r.post(&[Buf::ro(ro, 2048)]),
        t.post(&[4, 7]),
        t.r.post(&[Buf::wo(GuestAddress(HOLE_GPA), 2048)]),
        t.r.post(&[Buf::wo(GuestAddress(MEM_END - 100), 2048)]),
        t.r.post(&[Buf::wo(GuestAddress(u64::MAX - 4), 10)]),
        t.r.drv.add_raw(
            &t.r.g,
            &[
                Desc {
                    flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                    next: 1,
                    ..w(some, 64)
                },
                Desc {
                    flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                    next: 0,
                    ..w(some, 64)
                },
            ],
        ),
        t.r.drv.add_raw(&t.r.g, &[w(some, 0)]),
    ];
    t.r.drv.publish(&t.r.g);
    let good = t.post(&[2048]);
    let a = packet(500, 1);
    t.deliver(&[&a]);
    t.process();
    let mut want: Vec<(u16, u32)> = bad.iter().map(|&h| (h, 0)).collect();
    want.push((good, len32(&a)));
    let used = t.r.used();
    assert_eq!(used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(), want);
    assert_eq!(t.r.g.used_bytes(&used[7]), delivered(&a, 1));
    assert_eq!(
        t.r.g.read(ro, 2048),
        vec![0; 2048],
        "read-only buffer written"
    );
    assert_counters(
        &t.r.m,
        &[
            ("rx_drop_bad_direction", 1),
            ("rx_drop_short_buffer", 1),
            ("rx_drop_bad_memory", 3),
            ("rx_drop_bad_chain", 2),
            ("rx_packets", 1),
            ("rx_bytes", 500),
            ("rx_batches", 1),
            ("rx_no_buffers", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn a_region_removed_under_a_stashed_chain() {
    let mut t = Rx::new(8, PLAIN);
    let h0 = t.post(&[2048]);
    assert_eq!(t.process(), RxOutcome::Drained, "nothing to receive");
    assert_eq!(t.available(), Some(0), "h0 is stashed");
    t.r.g.remove_region(1);
    let b = t.r.g.buf(0, 2048);
    let h1 = t.r.post(&[Buf::wo(b, 2048)]);
    let a = packet(100, 1);
    t.deliver(&[&a]);
    t.process();
    let used = t.r.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(h0, 0), (h1, len32(&a))]
    );
    assert_eq!(t.r.g.used_bytes(&used[1]), delivered(&a, 1));
    assert_eq!(t.r.m.rx_drop_bad_memory.get(), 1);
    assert_eq!(t.r.m.rx_packets.get(), 1);
}

#[test]
fn a_receive_error_is_counted_and_the_chain_kept() {
    let mut t = Rx::new(8, PLAIN);
    let h = t.post(&[2048]);
    t.r.up.inbound.push_back(Err(()));
    assert_eq!(t.process(), RxOutcome::Drained);
    assert_counters(&t.r.m, &[("rx_uplink_errors", 1)]);
    let a = packet(100, 1);
    t.deliver(&[&a]);
    t.process();
    assert_eq!(t.r.used_heads(), vec![(h, len32(&a))]);
}

#[test]
fn budget_after_rx_batch_packets() {
    let mut t = Rx::new(128, PLAIN);
    for _ in 0..=RX_BATCH {
        t.post(&[256]);
    }
    let a = packet(50, 1);
    t.deliver(&vec![&a; RX_BATCH + 1]);
    assert_eq!(t.process(), RxOutcome::Budget);
    assert_eq!(t.r.used().len(), RX_BATCH);
    assert_eq!(t.r.calls(), 1);
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    assert_eq!(t.r.used().len(), 1);
    let n = u64::try_from(RX_BATCH + 1).unwrap();
    assert_counters(
        &t.r.m,
        &[
            ("rx_packets", n),
            ("rx_bytes", 50 * n),
            ("rx_batches", 2),
            ("rx_no_buffers", 1),
            ("notifications", 2),
        ],
    );
}

#[test]
fn event_idx_suppresses_interrupts_the_guest_did_not_ask_for() {
    let mut t = Rx::with(8, PLAIN, |s| s.event_idx = true);
    t.r.drv.set_event_idx(true);
    for _ in 0..5 {
        t.post(&[2048]);
    }
    let a = packet(60, 1);
    // A started ring's first decision notifies (it cannot know what the guest was
    // last told); after that used_event decides.
    t.deliver(&[&a]);
    t.process();
    assert_eq!(t.r.used().len(), 1);
    assert_eq!(t.r.calls(), 1, "the first decision after start");
    t.r.drv.set_used_event(&t.r.g, 4);
    t.deliver(&[&a, &a]);
    t.process();
    assert_eq!(t.r.used().len(), 2);
    assert_eq!(t.r.calls(), 0, "used_event 4 not reached by entries 1..3");
    t.deliver(&[&a, &a]);
    t.process();
    assert_eq!(t.r.used().len(), 2);
    assert_eq!(t.r.calls(), 1, "entries 3..5 cross used_event 4");
    assert_counters(
        &t.r.m,
        &[
            ("rx_packets", 5),
            ("rx_bytes", 300),
            ("rx_batches", 3),
            ("rx_no_buffers", 1),
            ("notifications", 2),
            ("notifications_suppressed", 1),
        ],
    );
}

#[test]
fn with_mrg_rxbuf_a_hostile_chain_between_good_ones_costs_only_itself() {
    let mut t = Rx::new(8, MRG);
    let h0 = t.post(&[1024]);
    let bad = [
        t.r.post(&[Buf::wo(GuestAddress(HOLE_GPA), 1024)]),
        t.r.post(&[Buf::wo(GuestAddress(MEM_END - 10), 1024)]),
    ];
    let h3 = t.post(&[1024]);
    let a = packet(1400, 1);
    t.deliver(&[&a]);
    t.process();
    let used = t.r.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(bad[0], 0), (bad[1], 0), (h0, 1024), (h3, 1412 - 1024)]
    );
    let got: Vec<u8> = [t.r.g.used_bytes(&used[2]), t.r.g.used_bytes(&used[3])].concat();
    assert_eq!(got, delivered(&a, 2));
    assert_eq!(t.r.m.rx_drop_bad_memory.get(), 2);
}

#[test]
fn a_dry_limit_stops_reading_the_uplink_and_charges_whole_packets() {
    use crate::ratelimit::{BucketConfig, LimitConfig, Limiter};
    let mut t = Rx::new(8, PLAIN);
    let heads: Vec<u16> = (0..4).map(|_| t.post(&[2048])).collect();
    let pkts: Vec<Vec<u8>> = (0..4u8).map(|i| packet(1000, i)).collect();
    t.deliver(&pkts.iter().collect::<Vec<_>>());
    // 1500 bytes per 100 ms: the first packet fits, the second goes into debt (it is
    // read while a token is left), the third waits for the debt to be paid.
    let mut l = Limiter::new(
        &LimitConfig {
            bandwidth: Some(BucketConfig {
                size: 1500,
                one_time_burst: 0,
                refill_time_ms: 100,
            }),
            ops: None,
        },
        0,
    )
    .unwrap();
    let r = &mut t.r;
    let o = t.rx.process_gated(
        &mut r.dev, &r.g.map, &mut r.up, t.features, MTU, &r.m, &mut l,
    );
    // 500 bytes of debt, 15 per ms: 501 bytes' time until a token.
    assert_eq!(o, RxOutcome::Throttled(501 * 100_000_000 / 1500));
    assert_eq!(l.bytes().unwrap().level(), -500);
    let used = t.r.used();
    assert_eq!(
        used.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![heads[0], heads[1]]
    );
    assert_eq!(
        t.r.up.inbound.len(),
        2,
        "the rest wait in the uplink's queue"
    );
    l.refill(1_000_000_000);
    let r = &mut t.r;
    let o = t.rx.process_gated(
        &mut r.dev, &r.g.map, &mut r.up, t.features, MTU, &r.m, &mut l,
    );
    assert!(matches!(o, RxOutcome::Throttled(_)), "{o:?}");
    assert_eq!(t.r.used().len(), 2);
    assert!(t.r.up.inbound.is_empty());
    assert_eq!(t.r.m.rx_packets.get(), 4);
    assert_eq!(t.r.m.snapshot().drops(), 0);
}
