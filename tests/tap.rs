// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Scenarios through a real TAP inside a network namespace each test creates (and
//! deletes): the daemon runs in the namespace (`ip netns exec`), its socket stays
//! reachable from here, and frames are captured and injected with AF_PACKET sockets
//! opened inside the namespace. Needs root; without it each test says why it skips.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::guest::{bit, GuestConfig, BASE_FEATURES};
use common::packet::{
    assert_bytes, guest_frames, ipv4_tcp_frame, ipv4_udp_frame, pattern, peer_frames, total_len,
    VnetHdr, ETH_P_IP, ETH_P_TEST, GUEST_MAC, PEER_MAC, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
};
use common::rig::Rig;
use common::ring::Buf;
use common::{STATS_TIMEOUT, TIMEOUT};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The TAP's name inside each test's own namespace.
const TAP: &str = "vnmtap0";

/// A daemon on [`TAP`] in a fresh namespace and a guest of `cfg` connected to it;
/// `None` when not root.
fn tap_rig(test: &str, cfg: GuestConfig) -> Option<Rig> {
    Rig::on_tap(test, cfg, TAP)
}

#[test]
fn tx_frames_arrive_on_the_tap() {
    let Some(mut r) = tap_rig("tx_frames_arrive_on_the_tap", GuestConfig::default()) else {
        return;
    };
    let frames = guest_frames(1000, 16, 60, 1514);
    r.send_to_peer(0, &frames);
    let s = r.d.wait_stats("16 TX packets", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 16
    });
    assert_eq!(s.queue(0, "tx_bytes"), total_len(&frames), "{s}");
    assert!(r.g.pairs[0].tx.was_called(), "no TX call signalled");
}

#[test]
fn rx_frames_from_the_tap_arrive_in_guest_buffers() {
    let Some(mut r) = tap_rig(
        "rx_frames_from_the_tap_arrive_in_guest_buffers",
        GuestConfig::default(),
    ) else {
        return;
    };
    r.g.post_rx(0, 32, 2048);
    let frames = peer_frames(2000, 16, 60, 1514);
    r.inject(&frames, ETH_P_TEST);
    let got = r.g.recv(0, frames.len(), TIMEOUT);
    for (i, (p, f)) in got.iter().zip(&frames).enumerate() {
        assert_bytes(&p.frame, f, &format!("frame {i} in guest RX buffers"));
        assert_eq!(p.hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!((p.buffers, p.hdr.num_buffers), (1, 1), "frame {i}");
    }
    assert!(r.g.pairs[0].rx.was_called(), "no RX call signalled");
    let s = r.d.wait_stats("16 RX packets", STATS_TIMEOUT, |s| {
        s.queue(0, "rx_packets") == 16
    });
    assert_eq!(s.queue(0, "rx_bytes"), total_len(&frames), "{s}");
}

#[test]
fn rx_without_mrg_rxbuf_and_event_idx() {
    let cfg = GuestConfig {
        features: BASE_FEATURES & !bit(VIRTIO_NET_F_MRG_RXBUF) & !bit(VIRTIO_RING_F_EVENT_IDX),
        ..GuestConfig::default()
    };
    let Some(mut r) = tap_rig("rx_without_mrg_rxbuf_and_event_idx", cfg) else {
        return;
    };
    r.g.post_rx(0, 16, 1600);
    let frames = peer_frames(3000, 16, 60, 1514);
    r.inject(&frames, ETH_P_TEST);
    let got = r.g.recv(0, frames.len(), TIMEOUT);
    for (i, (p, f)) in got.iter().zip(&frames).enumerate() {
        assert_bytes(&p.frame, f, &format!("frame {i}"));
        assert_eq!(
            p.hdr.num_buffers, 1,
            "frame {i}: num_buffers must be 1 without MRG_RXBUF"
        );
    }
    let tx = guest_frames(3100, 8, 60, 1514);
    r.send_to_peer(0, &tx);
}

#[test]
fn gso_64k_packet_spans_merged_buffers() {
    let cfg = GuestConfig {
        features: BASE_FEATURES | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4),
        ..GuestConfig::default()
    };
    let Some(mut r) = tap_rig("gso_64k_packet_spans_merged_buffers", cfg) else {
        return;
    };
    // Enough 4 KiB buffers for the largest packet GUEST_TSO4 allows, and some more.
    r.g.post_rx(0, 40, 4096);
    let payload = pattern(4000, 60_000);
    let frame = ipv4_tcp_frame(GUEST_MAC, PEER_MAC, &payload);
    let vnet = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let gso = r.ns().packet_socket(TAP, 0, true);
    let mut buf = vnet.to_bytes10().to_vec();
    buf.extend_from_slice(&frame);
    gso.send(&buf, ETH_P_IP, GUEST_MAC);

    let got = r.g.recv(0, 1, TIMEOUT);
    let p = &got[0];
    assert_bytes(
        &p.frame,
        &frame,
        "64 KiB GSO packet gathered from the guest buffers",
    );
    p.assert_merged();
    assert_eq!(
        p.hdr.gso_type & 0x7f,
        VIRTIO_NET_HDR_GSO_TCPV4,
        "gso_type: {:?}",
        p.hdr
    );
    assert_eq!(p.hdr.gso_size, 1448, "gso_size: {:?}", p.hdr);
    assert_eq!(
        p.hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        "flags: {:?}",
        p.hdr
    );
    assert_eq!(
        (p.hdr.csum_start, p.hdr.csum_offset),
        (34, 16),
        "{:?}",
        p.hdr
    );
    let s = r.d.wait_stats("one RX packet", STATS_TIMEOUT, |s| {
        s.queue(0, "rx_packets") == 1
    });
    assert_eq!(s.queue(0, "rx_bytes"), total_len(&[frame]), "{s}");
}

#[test]
fn two_queue_pairs_on_a_multiqueue_tap() {
    let cfg = GuestConfig {
        pairs: 2,
        ..GuestConfig::default()
    };
    let Some(mut r) = tap_rig("two_queue_pairs_on_a_multiqueue_tap", cfg) else {
        return;
    };
    // TX on both pairs: all 15 frames reach the TAP (order across queues is free).
    let f0 = guest_frames(5000, 6, 60, 1514);
    let f1 = guest_frames(5100, 9, 60, 1514);
    r.g.send(0, &f0);
    r.g.send(1, &f1);
    r.g.wait_tx(0, f0.len());
    r.g.wait_tx(1, f1.len());
    let mut want: HashMap<Vec<u8>, usize> = HashMap::new();
    for f in f0.iter().chain(&f1) {
        *want.entry(f.clone()).or_default() += 1;
    }
    for i in 0..f0.len() + f1.len() {
        let Some(got) = r.peer().cap.recv(TIMEOUT) else {
            r.d.fail(&format!("only {i} of 15 TX frames reached the TAP"));
        };
        match want.get_mut(&got) {
            Some(n) if *n > 0 => *n -= 1,
            _ => panic!(
                "unexpected or duplicated frame on the TAP ({} bytes)",
                got.len()
            ),
        }
    }

    // RX: 32 UDP flows; the multi-queue TAP spreads them over both pairs by hash.
    r.g.post_rx(0, 40, 2048);
    r.g.post_rx(1, 40, 2048);
    let frames: Vec<Vec<u8>> = (0..32u16)
        .map(|i| {
            ipv4_udp_frame(
                GUEST_MAC,
                PEER_MAC,
                1000 + 7 * i,
                &pattern(5200 + u32::from(i), 200),
            )
        })
        .collect();
    r.inject(&frames, ETH_P_IP);
    let mut per_pair = [0u64; 2];
    let mut seen = vec![false; frames.len()];
    let deadline = Instant::now() + TIMEOUT;
    while per_pair.iter().sum::<u64>() < 32 && Instant::now() < deadline {
        for (pair, count) in per_pair.iter_mut().enumerate() {
            for p in r.g.recv_until(pair, 32, Duration::from_millis(50)) {
                let Some(i) = frames.iter().position(|f| *f == p.frame) else {
                    panic!(
                        "pair {pair}: a frame that was never sent ({} bytes)",
                        p.frame.len()
                    );
                };
                assert!(!seen[i], "frame {i} delivered twice");
                seen[i] = true;
                *count += 1;
            }
        }
    }
    assert_eq!(
        per_pair.iter().sum::<u64>(),
        32,
        "received {per_pair:?} of 32 injected frames{}",
        r.g.log().context()
    );
    assert!(
        per_pair.iter().all(|n| *n > 0),
        "all 32 flows landed on one pair: {per_pair:?}"
    );
    let s = r.d.wait_stats("per-queue counters", STATS_TIMEOUT, |s| {
        s.queue(0, "rx_packets") == per_pair[0] && s.queue(1, "rx_packets") == per_pair[1]
    });
    assert_eq!(s.queue(0, "tx_packets"), 6, "{s}");
    assert_eq!(s.queue(1, "tx_packets"), 9, "{s}");
}

#[test]
fn reconnect_keeps_the_tap_and_rx_resumes_without_a_kick() {
    let Some(mut r) = tap_rig(
        "reconnect_keeps_the_tap_and_rx_resumes_without_a_kick",
        GuestConfig::default(),
    ) else {
        return;
    };
    r.g.post_rx(0, 16, 2048);
    let tx = guest_frames(6000, 4, 60, 1514);
    r.send_to_peer(0, &tx);
    let rx = peer_frames(6100, 4, 60, 1514);
    r.inject(&rx, ETH_P_TEST);
    for (p, f) in r.g.recv(0, 4, TIMEOUT).iter().zip(&rx) {
        assert_bytes(&p.frame, f, "before the disconnect");
    }

    // The frontend goes away; 12 RX buffers stay posted in guest memory.
    r.reconnect();

    // No RX kick after the reconnect: the restored ring must run on its own.
    let rx = peer_frames(6200, 4, 60, 1514);
    r.inject(&rx, ETH_P_TEST);
    for (p, f) in r.g.recv(0, 4, TIMEOUT).iter().zip(&rx) {
        assert_bytes(
            &p.frame,
            f,
            "after the reconnect, into buffers posted before it",
        );
    }
    let tx = guest_frames(6300, 4, 60, 1514);
    r.send_to_peer(0, &tx);
}

#[test]
fn tso_packet_from_the_guest_reaches_the_tap_whole() {
    let cfg = GuestConfig {
        features: BASE_FEATURES | bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4),
        ..GuestConfig::default()
    };
    let Some(mut r) = tap_rig("tso_packet_from_the_guest_reaches_the_tap_whole", cfg) else {
        return;
    };
    // Capture IPv4 on the TAP with the kernel's view of the offload (virtio_net_hdr).
    let cap = r.ns().packet_socket(TAP, ETH_P_IP, true);
    let frame = ipv4_tcp_frame(PEER_MAC, GUEST_MAC, &pattern(7000, 60_000));
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    // The header, then the frame in four pieces alternating between the two regions.
    let h = r.g.mem.alloc(0, 12, 16);
    r.g.mem.write(h.0, &hdr.to_bytes());
    let mut bufs = vec![Buf::ro(h, 12)];
    for (i, piece) in frame.chunks(frame.len().div_ceil(4)).enumerate() {
        let a =
            r.g.mem
                .alloc(i % 2, u64::try_from(piece.len()).unwrap(), 64);
        r.g.mem.write(a.0, piece);
        bufs.push(Buf::ro(a, piece.len()));
    }
    r.g.pairs[0].tx.ring.add_chain(&r.g.mem, &bufs);
    r.g.kick_tx(0);
    r.g.wait_tx(0, 1);
    let Some(got) = cap.recv(TIMEOUT) else {
        r.d.fail("the TSO packet never reached the TAP");
    };
    let vnet = VnetHdr::from_bytes(&[&got[..10], &[0, 0]].concat());
    assert_bytes(&got[10..], &frame, "TSO packet on the TAP");
    assert_eq!(
        (vnet.gso_type & 0x7f, vnet.gso_size),
        (VIRTIO_NET_HDR_GSO_TCPV4, 1448),
        "the kernel's view of the packet: {vnet:?}"
    );
    let s = r.d.wait_stats("one TX packet", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 1
    });
    assert_eq!(s.queue(0, "tx_bytes"), total_len(&[frame]), "{s}");
}

#[test]
fn rx_waits_for_guest_buffers_and_loses_nothing() {
    let Some(mut r) = tap_rig(
        "rx_waits_for_guest_buffers_and_loses_nothing",
        GuestConfig::default(),
    ) else {
        return;
    };
    // Frames arrive while the guest has no RX buffers: they wait in the TAP.
    let frames = peer_frames(8000, 8, 60, 1514);
    r.inject(&frames, ETH_P_TEST);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !r.g.pairs[0].rx.ring.has_used(&r.g.mem),
        "used entries without posted buffers"
    );
    // The guest posts buffers and kicks: every frame arrives, in order.
    r.g.post_rx(0, 16, 2048);
    let got = r.g.recv(0, frames.len(), TIMEOUT);
    for (i, (p, f)) in got.iter().zip(&frames).enumerate() {
        assert_bytes(&p.frame, f, &format!("frame {i} held until buffers came"));
    }
}

#[test]
fn gso_packet_into_big_buffers_without_mrg_rxbuf() {
    let cfg = GuestConfig {
        features: (BASE_FEATURES & !bit(VIRTIO_NET_F_MRG_RXBUF))
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4),
        ..GuestConfig::default()
    };
    let Some(mut r) = tap_rig("gso_packet_into_big_buffers_without_mrg_rxbuf", cfg) else {
        return;
    };
    // "Big packets" buffers as Linux posts them: a header descriptor, then 17 pages,
    // alternating regions.
    for _ in 0..4 {
        let h = r.g.mem.alloc(0, 12, 16);
        let mut bufs = vec![Buf::wo(h, 12)];
        for i in 0..17 {
            let a = r.g.mem.alloc(i % 2, 4096, 4096);
            bufs.push(Buf::wo(a, 4096));
        }
        r.g.pairs[0].rx.ring.add_chain(&r.g.mem, &bufs);
    }
    r.g.kick_rx(0);
    let frame = ipv4_tcp_frame(GUEST_MAC, PEER_MAC, &pattern(9000, 60_000));
    let vnet = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let gso = r.ns().packet_socket(TAP, 0, true);
    gso.send(
        &[&vnet.to_bytes10()[..], &frame].concat(),
        ETH_P_IP,
        GUEST_MAC,
    );
    let got = r.g.recv(0, 1, TIMEOUT);
    let p = &got[0];
    assert_bytes(&p.frame, &frame, "64 KiB GSO packet in one big chain");
    assert_eq!(
        p.hdr.gso_type & 0x7f,
        VIRTIO_NET_HDR_GSO_TCPV4,
        "{:?}",
        p.hdr
    );
    assert_eq!(p.hdr.gso_size, 1448, "{:?}", p.hdr);
}
