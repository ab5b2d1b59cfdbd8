// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A hostile guest (issue 2, point 7), one case per test, each against its own daemon
//! with two queue pairs on the loopback uplink. For every case: the daemon does not
//! crash, the chain comes back on the used ring with length 0 (or the ring stops, for
//! the avail-index case), exactly the matching drop counter moves, the bad packet is
//! never delivered, and the OTHER queue pair keeps carrying traffic afterwards (and,
//! for chain errors, the same pair too).

mod common;

use common::daemon::Daemon;
use common::guest::{bit, Guest, GuestConfig, BASE_FEATURES};
use common::memory::HOLE_GPA;
use common::packet::{
    guest_frames, ipv4_tcp_frame, pattern, VnetHdr, BROADCAST, GUEST_MAC,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
};
use common::rig::Rig;
use common::ring::{Buf, Desc, SplitRing, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use common::STATS_TIMEOUT;
use std::time::Duration;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

const QUEUE_SIZE: u16 = 64;

fn rig() -> Rig {
    rig_with(&[])
}

fn rig_with(args: &[&str]) -> Rig {
    let cfg = GuestConfig {
        pairs: 2,
        queue_size: QUEUE_SIZE,
        // TSO and checksum offload acked, so that header errors are about the header.
        features: BASE_FEATURES
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6),
        ..GuestConfig::default()
    };
    Rig::loopback(cfg, args)
}

/// A valid 12-byte header in region 0 and a frame in region 1.
fn good_parts(g: &Guest, seed: u32, len: usize) -> (Buf, Buf) {
    let h = g.mem.alloc(0, 12, 16);
    g.mem.write(h.0, &VnetHdr::default().to_bytes());
    let f = g.mem.alloc(1, u64::try_from(len).unwrap(), 64);
    g.mem.write(
        f.0,
        &common::packet::test_frame(BROADCAST, GUEST_MAC, seed, len),
    );
    (Buf::ro(h, 12), Buf::ro(f, len))
}

/// The other pair (1) and, when `same_pair`, pair 0 still carry traffic; the daemon runs.
fn still_serving(r: &mut Rig, same_pair: bool) {
    r.g.loopback_roundtrip(1, &guest_frames(9000, 4, 60, 1514));
    if same_pair {
        r.g.loopback_roundtrip(0, &guest_frames(9100, 4, 60, 1514));
    }
    r.d.assert_running("after the hostile chain");
}

/// Exactly one drop on pair 0, counted as `counter`; nothing dropped on pair 1.
fn expect_one_drop(d: &mut Daemon, counter: &str) {
    let s = d.wait_stats(&format!("queue 0 {counter} == 1"), STATS_TIMEOUT, |s| {
        s.queue(0, counter) >= 1
    });
    let drops0 = s.drops(0);
    let total0: u64 = drops0.iter().map(|(_, v)| v).sum();
    assert!(
        s.queue(0, counter) == 1 && total0 == 1,
        "expected exactly one drop, counted as {counter}; pair 0 drops: {drops0:?}"
    );
    let total1: u64 = s.drops(1).iter().map(|(_, v)| v).sum();
    assert_eq!(total1, 0, "pair 1 counted drops: {:?}", s.drops(1));
}

/// Run a TX case: `build` adds one bad chain to pair 0's TX ring and returns its head.
fn tx_case(counter: &str, build: impl FnOnce(&mut Guest) -> u16) {
    let mut r = rig();
    // RX buffers ready: a bad chain wrongly sent would be looped back into them.
    r.g.post_rx(0, 4, 2048);
    let head = build(&mut r.g);
    r.g.kick_tx(0);
    let used = r.g.wait_tx(0, 1);
    assert_eq!(used[0].id, head, "the bad chain's head comes back");
    assert_eq!(used[0].len, 0, "used length of a dropped TX chain");
    expect_one_drop(&mut r.d, counter);
    let s = r.d.stats().expect("stats file");
    assert_eq!(
        s.queue(0, "tx_packets"),
        0,
        "a bad chain was transmitted: {s}"
    );
    // Nothing was looped back into pair 0's RX buffers.
    assert!(
        !r.g.pairs[0].rx.ring.has_used(&r.g.mem),
        "the bad chain's packet reached the RX ring"
    );
    still_serving(&mut r, true);
}

#[test]
fn tx_descriptor_outside_guest_memory() {
    tx_case("tx_drop_bad_memory", |g| {
        let (h, _) = good_parts(g, 1, 100);
        let bad = Buf {
            addr: HOLE_GPA,
            len: 100,
            write: false,
        };
        g.pairs[0].tx.ring.add_chain(&g.mem, &[h, bad])
    });
}

#[test]
fn tx_descriptor_address_plus_len_wraps() {
    tx_case("tx_drop_bad_memory", |g| {
        let (h, _) = good_parts(g, 2, 100);
        let bad = Buf {
            addr: u64::MAX - 0x3f,
            len: 0x1000,
            write: false,
        };
        g.pairs[0].tx.ring.add_chain(&g.mem, &[h, bad])
    });
}

#[test]
fn tx_descriptor_loop() {
    tx_case("tx_drop_bad_chain", |g| {
        let (h, f) = good_parts(g, 3, 100);
        // header -> frame -> header -> ...
        g.pairs[0].tx.ring.add_raw(
            &g.mem,
            &[
                Desc {
                    addr: h.addr,
                    len: h.len,
                    flags: VRING_DESC_F_NEXT,
                    next: 1,
                },
                Desc {
                    addr: f.addr,
                    len: f.len,
                    flags: VRING_DESC_F_NEXT,
                    next: 0,
                },
            ],
        )
    });
}

#[test]
fn tx_chain_longer_than_the_queue_size() {
    tx_case("tx_drop_bad_chain", |g| {
        // Queue size + 1 descriptors, no loop: an indirect table of 65 entries.
        let (h, f) = good_parts(g, 4, 200);
        let mut bufs = vec![h];
        bufs.extend((0..u64::from(QUEUE_SIZE)).map(|i| Buf {
            addr: f.addr + i,
            len: 1,
            write: false,
        }));
        assert_eq!(bufs.len(), usize::from(QUEUE_SIZE) + 1);
        let table = g.mem.alloc(0, 16 * u64::try_from(bufs.len()).unwrap(), 16);
        g.pairs[0].tx.ring.add_indirect(&g.mem, table, &bufs)
    });
}

#[test]
fn tx_device_writable_descriptor() {
    tx_case("tx_drop_bad_direction", |g| {
        let (h, f) = good_parts(g, 5, 100);
        let f = Buf { write: true, ..f };
        g.pairs[0].tx.ring.add_chain(&g.mem, &[h, f])
    });
}

#[test]
fn tx_zero_length_buffer() {
    tx_case("tx_drop_bad_chain", |g| {
        let (h, f) = good_parts(g, 6, 100);
        let zero = Buf { len: 0, ..f };
        g.pairs[0].tx.ring.add_chain(&g.mem, &[h, zero, f])
    });
}

#[test]
fn tx_header_with_unknown_gso_type() {
    tx_case("tx_drop_bad_header", |g| {
        let frame = ipv4_tcp_frame(BROADCAST, GUEST_MAC, &pattern(7, 3000));
        let hdr = VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: 0x09, // no such GSO type
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        g.add_tx(0, hdr, &frame, common::guest::TxLayout::Split)
    });
}

#[test]
fn tx_header_with_bogus_hdr_len() {
    tx_case("tx_drop_bad_header", |g| {
        let frame = ipv4_tcp_frame(BROADCAST, GUEST_MAC, &pattern(8, 3000));
        let hdr = VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 4000, // longer than the 3054-byte packet
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        g.add_tx(0, hdr, &frame, common::guest::TxLayout::Split)
    });
}

#[test]
fn tx_indirect_table_inside_an_indirect_table() {
    tx_case("tx_drop_bad_chain", |g| {
        let (h, f) = good_parts(g, 9, 100);
        let inner = g.mem.alloc(0, 16, 16);
        SplitRing::write_desc(
            &g.mem,
            inner,
            0,
            Desc {
                addr: f.addr,
                len: f.len,
                flags: 0,
                next: 0,
            },
        );
        let outer = g.mem.alloc(0, 32, 16);
        g.pairs[0].tx.ring.add_indirect_raw(
            &g.mem,
            outer,
            &[
                Desc {
                    addr: h.addr,
                    len: h.len,
                    flags: VRING_DESC_F_NEXT,
                    next: 1,
                },
                Desc {
                    addr: inner.0,
                    len: 16,
                    flags: VRING_DESC_F_INDIRECT,
                    next: 0,
                },
            ],
        )
    });
}

#[test]
fn tx_next_index_beyond_the_table() {
    tx_case("tx_drop_bad_chain", |g| {
        let (h, f) = good_parts(g, 11, 100);
        let head = g.pairs[0].tx.ring.add_chain(&g.mem, &[h, f]);
        let (table, _, _) = g.pairs[0].tx.ring.addresses();
        let d = SplitRing::read_desc(&g.mem, table, head);
        SplitRing::write_desc(
            &g.mem,
            table,
            head,
            Desc {
                next: QUEUE_SIZE + 100,
                ..d
            },
        );
        head
    });
}

#[test]
fn tx_packet_larger_than_64k() {
    tx_case("tx_drop_oversized", |g| {
        let (h, _) = good_parts(g, 12, 100);
        let big = g.mem.alloc(1, 70_000, 64);
        g.mem.write(
            big.0,
            &common::packet::test_frame(BROADCAST, GUEST_MAC, 12, 70_000),
        );
        g.pairs[0]
            .tx
            .ring
            .add_chain(&g.mem, &[h, Buf::ro(big, 70_000)])
    });
}

/// Run an RX case: `build` adds one bad chain to pair 0's RX ring and returns its head;
/// a frame sent on pair 0 makes the device use it.
fn rx_case(counter: &str, build: impl FnOnce(&mut Guest) -> u16) {
    let mut r = rig();
    let head = build(&mut r.g);
    r.g.kick_rx(0);
    let first = guest_frames(9200, 1, 200, 200);
    r.g.send(0, &first);
    r.g.wait_tx(0, 1);
    let used = r.g.wait_rx_used(0, 1);
    assert_eq!(used[0].id, head, "the bad chain's head comes back");
    assert_eq!(used[0].len, 0, "used length of a refused RX chain");
    expect_one_drop(&mut r.d, counter);
    still_serving(&mut r, false);
    // Pair 0 receives again once it has good buffers. The first frame may have been
    // dropped with the bad chain or kept for the next buffer: either way, what arrives
    // is byte-exact and the new frame arrives.
    let second = guest_frames(9300, 1, 300, 300);
    r.g.post_rx(0, 2, 2048);
    r.g.send(0, &second);
    let mut seen_second = false;
    for _ in 0..2 {
        let got = r.g.recv_until(
            0,
            1,
            Duration::from_millis(if seen_second { 200 } else { 5000 }),
        );
        let Some(p) = got.first() else { break };
        if p.frame == second[0] {
            seen_second = true;
        } else {
            common::packet::assert_bytes(&p.frame, &first[0], "frame kept across the bad chain");
        }
    }
    assert!(
        seen_second,
        "pair 0 did not receive after the bad RX chain{}",
        r.g.log().context()
    );
    r.d.assert_running("after the hostile RX chain");
}

#[test]
fn rx_device_readable_descriptor() {
    rx_case("rx_drop_bad_direction", |g| {
        let a = g.mem.alloc(1, 2048, 64);
        g.pairs[0].rx.ring.add_chain(&g.mem, &[Buf::ro(a, 2048)])
    });
}

#[test]
fn rx_descriptor_outside_guest_memory() {
    rx_case("rx_drop_bad_memory", |g| {
        let bad = Buf {
            addr: HOLE_GPA,
            len: 2048,
            write: true,
        };
        g.pairs[0].rx.ring.add_chain(&g.mem, &[bad])
    });
}

#[test]
fn rx_descriptor_address_plus_len_wraps() {
    rx_case("rx_drop_bad_memory", |g| {
        let bad = Buf {
            addr: u64::MAX - 0x3f,
            len: 0x1000,
            write: true,
        };
        g.pairs[0].rx.ring.add_chain(&g.mem, &[bad])
    });
}

#[test]
fn rx_buffer_shorter_than_the_header() {
    rx_case("rx_drop_short_buffer", |g| {
        let a = g.mem.alloc(0, 8, 16);
        g.pairs[0].rx.ring.add_chain(&g.mem, &[Buf::wo(a, 8)])
    });
}

#[test]
fn avail_index_more_than_queue_size_ahead_stops_the_ring() {
    broken_ring_is_left_alone(&[]);
}

/// The same with a TX holdoff running when the ring breaks (its timer must stop too).
#[test]
fn avail_index_far_ahead_during_a_tx_holdoff_stops_the_ring() {
    broken_ring_is_left_alone(&["--tx-holdoff", "1"]);
}

fn broken_ring_is_left_alone(args: &[&str]) {
    let mut r = rig_with(args);
    r.g.loopback_roundtrip(0, &guest_frames(9400, 2, 60, 100));
    let used_before = r.g.pairs[0].tx.ring.used_idx(&r.g.mem);
    let (h, f) = good_parts(&r.g, 10, 100);
    r.g.pairs[0].tx.ring.add_chain(&r.g.mem, &[h, f]);
    let bogus = r.g.pairs[0]
        .tx
        .ring
        .avail_idx()
        .wrapping_add(QUEUE_SIZE + 2);
    r.g.pairs[0].tx.ring.set_avail_idx_raw(&r.g.mem, bogus);
    r.g.pairs[0].tx.kick.write(1).unwrap();
    let s =
        r.d.wait_stats("ring_errors on queue 0", STATS_TIMEOUT, |s| {
            s.queue(0, "ring_errors") >= 1
        });
    assert_eq!(s.queue(0, "tx_packets"), 2, "{s}");
    assert_eq!(
        r.g.pairs[0].tx.ring.used_idx(&r.g.mem),
        used_before,
        "the device consumed from a ring whose avail index is impossible"
    );
    still_serving(&mut r, false);
    assert_eq!(r.d.stats().unwrap().queue(1, "ring_errors"), 0);
    // The broken ring is left alone: no worker spins on it, and the daemon still
    // stops at once on SIGTERM.
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu(r.d.pid());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let ticks = cpu(r.d.pid()) - before;
    assert!(
        ticks < 30,
        "daemon used {ticks} CPU ticks in 1 s with a broken ring"
    );
    // SAFETY: kill(2) on the daemon child we spawned, by its PID.
    unsafe { libc::kill(i32::try_from(r.d.pid()).unwrap(), libc::SIGTERM) };
    assert!(
        r.d.wait_exit(std::time::Duration::from_secs(3)).is_some(),
        "daemon did not stop on SIGTERM"
    );
}
