// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! virtio-net offload features (issue 2, point 4) proven through the real daemon and a
//! real TAP inside a network namespace each test creates: what the guest transmits with
//! HOST_TSO6, HOST_ECN or CSUM reaches the TAP with its offload metadata intact (seen by
//! a `PACKET_VNET_HDR` capture socket, i.e. the kernel's own view of the skb), a header
//! using an offload the guest did not ack is a counted `tx_drop_bad_header` drop, and on
//! receive `TUNSETOFFLOAD` follows GUEST_TSO6 / GUEST_ECN / GUEST_CSUM: acked, a 60 KB
//! TCP/IPv6 GSO packet reaches the guest whole; not acked, the kernel segments it into
//! MTU-sized frames before the daemon sees it. Needs root; without it each test says
//! why it skips.

mod common;

use common::guest::{bit, GuestConfig, RxPacket, TxLayout, BASE_FEATURES};
use common::netns::PacketSocket;
use common::packet::{
    assert_bytes, complete_csum, ipv4_udp_frame, ipv4_udp_frame_partial_csum, pattern, tcp_frame,
    total_len, IpVersion, L4View, VnetHdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, GUEST_MAC, IPV4_HLEN,
    PEER_MAC, TCP_ACK, TCP_CSUM_OFFSET, TCP_CWR, TCP_PSH, UDP_CSUM_OFFSET,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV6,
};
use common::rig::Rig;
use common::ring::Used;
use common::stats::Stats;
use common::{STATS_TIMEOUT, TIMEOUT};
use std::time::Duration;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

/// The TAP's name inside each test's own namespace.
const TAP: &str = "vnmoff0";

/// TCP payload of every GSO packet: well above one segment, below 64 KiB.
const GSO_PAYLOAD: usize = 60_000;

/// Segment size of the IPv6 GSO packets: 40 + 20 + 1440 = a 1500-byte MTU packet.
const GSO_SIZE_V6: u16 = 1440;

/// Segment size of the IPv4 GSO packets (TCP timestamps' usual MSS).
const GSO_SIZE_V4: u16 = 1448;

/// Largest frame an MTU-1500 link carries (without the virtio-net header).
const MTU_FRAME: usize = 1514;

/// Initial TCP sequence number of the GSO packets.
const SEQ: u32 = 0x1000_0000;

/// A daemon on TAP [`TAP`] in a fresh namespace (link up) and a guest that acked
/// `features` (one queue pair). `None` when not root.
fn rig(test: &str, features: u64) -> Option<Rig> {
    let cfg = GuestConfig {
        features,
        ..GuestConfig::default()
    };
    Rig::on_tap(test, cfg, TAP)
}

/// The offload tests' own steps on the rig.
impl Rig {
    /// A socket capturing `ethertype` frames on the TAP with the kernel's
    /// `virtio_net_hdr` in front (the skb's GSO and checksum state).
    fn vnet_capture(&self, ethertype: u16) -> PacketSocket {
        let cap = self.ns().packet_socket(TAP, ethertype, true);
        cap.set_rcvbuf(4 << 20);
        cap
    }

    /// Send one TX chain (`hdr` in its own descriptor, the frame in the other region)
    /// and kick.
    fn transmit(&mut self, hdr: VnetHdr, frame: &[u8]) -> u16 {
        let head = self.g.add_tx(0, hdr, frame, TxLayout::Split);
        self.g.kick_tx(0);
        head
    }

    /// The next frame on `cap`: its 10-byte `virtio_net_hdr` (num_buffers 0) and bytes.
    fn captured(&self, cap: &PacketSocket, what: &str) -> (VnetHdr, Vec<u8>) {
        let Some(got) = cap.recv(TIMEOUT) else {
            self.d.fail(&format!(
                "{what} never reached the TAP in {}",
                self.ns().name()
            ));
        };
        assert!(got.len() > 10, "{what}: {}-byte capture", got.len());
        let vnet = VnetHdr::from_bytes(&[&got[..10], &[0, 0]].concat());
        (vnet, got[10..].to_vec())
    }

    /// Inject `frame` on the TAP towards the guest with `hdr` (PACKET_VNET_HDR): the
    /// kernel builds a GSO / CHECKSUM_PARTIAL skb from it, as from a local TCP stack.
    fn inject_gso(&self, hdr: VnetHdr, frame: &[u8], ethertype: u16) {
        let inj = self.ns().packet_socket(TAP, 0, true);
        inj.send(
            &[&hdr.to_bytes10()[..], frame].concat(),
            ethertype,
            GUEST_MAC,
        );
    }

    /// Wait until the stats satisfy `cond`, then check that pair 0 counted exactly the
    /// drops in `want` (name, value) and no other.
    fn expect_drops(&mut self, what: &str, want: &[(&str, u64)], cond: impl Fn(&Stats) -> bool) {
        let s = self.d.wait_stats(what, STATS_TIMEOUT, cond);
        for (name, value) in s.drops(0) {
            let expected = want.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
            assert_eq!(value, expected, "drop counter {name}: {s}");
        }
    }
}

/// A TCP GSO header for `ip` as a guest (or a local stack) writes it.
fn tcp_gso_hdr(ip: IpVersion, gso_type: u8, gso_size: u16) -> VnetHdr {
    VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: ip.tcp_hdr_len(),
        gso_size,
        csum_start: ip.l4_offset(),
        csum_offset: TCP_CSUM_OFFSET,
        num_buffers: 0,
    }
}

/// Check the capture of a guest's TSO packet: whole, byte-exact, with the GSO type and
/// segment size the guest gave and the checksum still to be done (CHECKSUM_PARTIAL).
fn check_tso_capture(r: &Rig, what: &str, vnet: VnetHdr, got: &[u8], want: &[u8], sent: VnetHdr) {
    if got != want {
        r.d.fail(&format!(
            "{what} on the TAP: {} (kernel header {vnet:?})",
            common::packet::first_difference(got, want)
        ));
    }
    assert_eq!(
        (vnet.gso_type, vnet.gso_size),
        (sent.gso_type, sent.gso_size),
        "{what}: the kernel's gso_type / gso_size differ from the guest's: {vnet:?}"
    );
    assert_eq!(
        (vnet.flags, vnet.csum_start, vnet.csum_offset),
        (
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            sent.csum_start,
            sent.csum_offset
        ),
        "{what}: checksum metadata on the TAP: {vnet:?}"
    );
}

#[test]
fn host_tso6_packet_reaches_the_tap_whole() {
    // HOST_TSO6 without HOST_TSO4: the IPv6 offload stands on its own.
    let features = BASE_FEATURES | bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO6);
    let Some(mut r) = rig("host_tso6_packet_reaches_the_tap_whole", features) else {
        return;
    };
    let cap = r.vnet_capture(ETH_P_IPV6);
    let ip = IpVersion::V6;
    let frame = tcp_frame(
        ip,
        PEER_MAC,
        GUEST_MAC,
        SEQ,
        TCP_ACK | TCP_PSH,
        &pattern(11_000, GSO_PAYLOAD),
    );
    let hdr = tcp_gso_hdr(ip, VIRTIO_NET_HDR_GSO_TCPV6, GSO_SIZE_V6);
    r.transmit(hdr, &frame);
    r.g.wait_tx(0, 1);
    let (vnet, got) = r.captured(&cap, "the TCP/IPv6 TSO packet");
    check_tso_capture(&r, "TCPV6 TSO packet", vnet, &got, &frame, hdr);
    assert!(
        cap.recv(Duration::from_millis(100)).is_none(),
        "more than one IPv6 frame on the TAP: the packet was segmented or duplicated"
    );
    let s = r.d.wait_stats("one TX packet", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 1
    });
    assert_eq!(s.queue(0, "tx_bytes"), total_len(&[frame]), "{s}");
    r.expect_drops("no drops", &[], |_| true);
}

#[test]
fn host_ecn_tso_packets_reach_the_tap_whole() {
    let features = BASE_FEATURES
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_HOST_ECN);
    let Some(mut r) = rig("host_ecn_tso_packets_reach_the_tap_whole", features) else {
        return;
    };
    let mut frames = Vec::new();
    for (i, (ip, gso_size)) in [(IpVersion::V4, GSO_SIZE_V4), (IpVersion::V6, GSO_SIZE_V6)]
        .into_iter()
        .enumerate()
    {
        let cap = r.vnet_capture(ip.ethertype());
        // A super-packet that carries CWR: GSO must keep it on the first segment only,
        // which is what the ECN bit of gso_type tells the stack below.
        let seed = 12_000 + u32::try_from(i).unwrap();
        let frame = tcp_frame(
            ip,
            PEER_MAC,
            GUEST_MAC,
            SEQ,
            TCP_CWR | TCP_ACK | TCP_PSH,
            &pattern(seed, GSO_PAYLOAD),
        );
        let hdr = tcp_gso_hdr(ip, ip.gso_tcp() | VIRTIO_NET_HDR_GSO_ECN, gso_size);
        r.transmit(hdr, &frame);
        r.g.wait_tx(0, 1);
        let what = format!("{ip:?} TSO packet with ECN (gso_type {:#x})", hdr.gso_type);
        let (vnet, got) = r.captured(&cap, &what);
        check_tso_capture(&r, &what, vnet, &got, &frame, hdr);
        frames.push(frame);
    }
    let s = r.d.wait_stats("two TX packets", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 2
    });
    assert_eq!(s.queue(0, "tx_bytes"), total_len(&frames), "{s}");
    r.expect_drops("no drops", &[], |_| true);
}

/// A TX header using an offload the guest did not ack: the chain comes back unsent
/// (used length 0), `tx_drop_bad_header` counts it, nothing reaches the TAP, and the
/// plain packet sent after it on the same queue does.
fn refused_header_case(test: &str, features: u64, bad: (VnetHdr, Vec<u8>)) {
    let Some(mut r) = rig(test, features) else {
        return;
    };
    let (hdr, frame) = bad;
    let cap = r.vnet_capture(ETH_P_IP);
    let bad_head = r.transmit(hdr, &frame);
    let good = ipv4_udp_frame(PEER_MAC, GUEST_MAC, 4242, &pattern(13_000, 300));
    let good_head = r.transmit(VnetHdr::default(), &good);
    let mut used: Vec<Used> = r.g.wait_tx(0, 2);
    used.sort_by_key(|u| u.id != bad_head);
    assert_eq!(
        (used[0].id, used[0].len),
        (bad_head, 0),
        "the refused chain comes back with length 0: {used:?}"
    );
    assert_eq!(used[1].id, good_head, "{used:?}");
    let (_, got) = r.captured(&cap, "the plain packet after the refused one");
    if got != good {
        r.d.fail(&format!(
            "the first frame on the TAP is not the plain packet ({}): the refused \
             header's packet was transmitted",
            common::packet::first_difference(&got, &good)
        ));
    }
    r.expect_drops(
        "tx_drop_bad_header == 1 and one TX packet",
        &[("tx_drop_bad_header", 1)],
        |s| s.queue(0, "tx_drop_bad_header") >= 1 && s.queue(0, "tx_packets") >= 1,
    );
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.queue(0, "tx_packets"), 1, "{s}");
    assert_eq!(s.queue(0, "tx_bytes"), total_len(&[good]), "{s}");
    assert!(
        cap.recv(Duration::from_millis(100)).is_none(),
        "a second frame reached the TAP"
    );
    r.d.assert_running("after the refused header");
}

#[test]
fn host_ecn_not_acked_is_a_bad_header_drop() {
    // TSO4 and checksum offload acked, HOST_ECN not: only the ECN bit is wrong.
    let features = BASE_FEATURES | bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4);
    let ip = IpVersion::V4;
    let frame = tcp_frame(
        ip,
        PEER_MAC,
        GUEST_MAC,
        SEQ,
        TCP_CWR | TCP_ACK | TCP_PSH,
        &pattern(14_000, 20_000),
    );
    let hdr = tcp_gso_hdr(ip, ip.gso_tcp() | VIRTIO_NET_HDR_GSO_ECN, GSO_SIZE_V4);
    refused_header_case(
        "host_ecn_not_acked_is_a_bad_header_drop",
        features,
        (hdr, frame),
    );
}

/// A non-GSO UDP/IPv4 packet with its checksum left to the device.
fn udp_needs_csum() -> (VnetHdr, Vec<u8>) {
    let frame = ipv4_udp_frame_partial_csum(PEER_MAC, GUEST_MAC, 5353, &pattern(15_000, 1000));
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: IpVersion::V4.l4_offset(),
        csum_offset: UDP_CSUM_OFFSET,
        num_buffers: 0,
    };
    (hdr, frame)
}

#[test]
fn csum_packet_reaches_the_tap_with_its_checksum_metadata() {
    let features = BASE_FEATURES | bit(VIRTIO_NET_F_CSUM);
    let Some(mut r) = rig(
        "csum_packet_reaches_the_tap_with_its_checksum_metadata",
        features,
    ) else {
        return;
    };
    let cap = r.vnet_capture(ETH_P_IP);
    let (hdr, frame) = udp_needs_csum();
    r.transmit(hdr, &frame);
    r.g.wait_tx(0, 1);
    let (vnet, got) = r.captured(&cap, "the NEEDS_CSUM UDP packet");
    assert_bytes(&got, &frame, "NEEDS_CSUM UDP packet on the TAP");
    assert_eq!(
        (vnet.flags, vnet.gso_type, vnet.csum_start, vnet.csum_offset),
        (
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_GSO_NONE,
            34,
            UDP_CSUM_OFFSET
        ),
        "the kernel's view of the packet: {vnet:?} (guest sent {hdr:?})"
    );
    // What the kernel will complete (csum_start, csum_offset, the pseudo-header sum in
    // the field) gives a checksum that verifies: the metadata is coherent.
    let mut done = got.clone();
    complete_csum(&mut done, vnet.csum_start, vnet.csum_offset);
    let view = L4View::parse(&done).expect("an IPv4/UDP frame");
    assert!(view.checksum_ok(), "completed UDP checksum does not verify");
    let s = r.d.wait_stats("one TX packet", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 1
    });
    assert_eq!(s.queue(0, "tx_bytes"), total_len(&[frame]), "{s}");
    r.expect_drops("no drops", &[], |_| true);
}

#[test]
fn csum_not_acked_is_a_bad_header_drop() {
    refused_header_case(
        "csum_not_acked_is_a_bad_header_drop",
        BASE_FEATURES,
        udp_needs_csum(),
    );
}

/// The TCP/IPv6 GSO packet with ECN the RX tests inject, and its header.
fn tcpv6_ecn_gso(seed: u32) -> (VnetHdr, Vec<u8>, Vec<u8>) {
    let ip = IpVersion::V6;
    let payload = pattern(seed, GSO_PAYLOAD);
    let frame = tcp_frame(
        ip,
        GUEST_MAC,
        PEER_MAC,
        SEQ,
        TCP_CWR | TCP_ACK | TCP_PSH,
        &payload,
    );
    let hdr = tcp_gso_hdr(
        ip,
        VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN,
        GSO_SIZE_V6,
    );
    (hdr, frame, payload)
}

/// The injected packet arrived whole: one packet over several merged buffers, with
/// TCPV6|ECN, the segment size, checksum state, byte-exact.
fn check_whole_gso(r: &Rig, p: &RxPacket, frame: &[u8]) {
    if p.frame != frame {
        r.d.fail(&format!(
            "TCPV6|ECN GSO packet in guest buffers: {} (header {:?}, {} buffers); a \
             1514-byte first packet means the TAP segmented it: TSO6 offload not set",
            common::packet::first_difference(&p.frame, frame),
            p.hdr,
            p.buffers
        ));
    }
    assert_eq!(
        p.hdr.gso_type,
        VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN,
        "gso_type: {:?}",
        p.hdr
    );
    assert_eq!(p.hdr.gso_size, GSO_SIZE_V6, "gso_size: {:?}", p.hdr);
    p.assert_merged();
    let csum = p.hdr.flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID);
    assert_ne!(
        csum, 0,
        "a GSO packet without NEEDS_CSUM or DATA_VALID: {:?}",
        p.hdr
    );
    if p.hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        assert_eq!(
            (p.hdr.csum_start, p.hdr.csum_offset),
            (IpVersion::V6.l4_offset(), TCP_CSUM_OFFSET),
            "{:?}",
            p.hdr
        );
    }
}

/// The injected packet arrived segmented by the kernel: MTU-sized TCP/IPv6 frames (all
/// full but the last), one buffer each, no GSO type, consecutive sequence numbers, checksums that verify (after
/// completing NEEDS_CSUM ones), and the payload reassembles byte for byte.
fn check_segmented(got: &[RxPacket], payload: &[u8]) {
    let want = payload.len().div_ceil(usize::from(GSO_SIZE_V6));
    assert_eq!(
        got.len(),
        want,
        "{} segments of {GSO_SIZE_V6} bytes expected",
        want
    );
    let mut joined = Vec::with_capacity(payload.len());
    for (i, p) in got.iter().enumerate() {
        assert_eq!(
            p.hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE,
            "segment {i}: {:?}",
            p.hdr
        );
        if i + 1 < want {
            assert_eq!(
                p.frame.len(),
                MTU_FRAME,
                "segment {i} of {want}: not a full MTU-1500 frame"
            );
        }
        assert_eq!(p.buffers, 1, "segment {i}: {:?}", p.hdr);
        let mut f = p.frame.clone();
        if p.hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            assert_eq!(
                (p.hdr.csum_start, p.hdr.csum_offset),
                (IpVersion::V6.l4_offset(), TCP_CSUM_OFFSET),
                "segment {i}: {:?}",
                p.hdr
            );
            complete_csum(&mut f, p.hdr.csum_start, p.hdr.csum_offset);
        }
        assert_eq!(
            &f[..ETH_HLEN],
            &common::packet::eth_header(GUEST_MAC, PEER_MAC, ETH_P_IPV6)[..],
            "segment {i}: Ethernet header"
        );
        let view =
            L4View::parse(&f).unwrap_or_else(|| panic!("segment {i} is not a TCP/IPv6 frame"));
        assert_eq!((view.ip, view.proto), (IpVersion::V6, 6), "segment {i}");
        assert!(
            view.checksum_ok(),
            "segment {i}: TCP checksum does not verify (header {:?})",
            p.hdr
        );
        let offset = u32::try_from(joined.len()).unwrap();
        assert_eq!(
            view.tcp_seq(),
            Some(SEQ + offset),
            "segment {i}: sequence number"
        );
        joined.extend_from_slice(view.tcp_payload().expect("TCP"));
    }
    assert_bytes(&joined, payload, "payload reassembled from the segments");
}

/// Features of the RX tests: MRG_RXBUF (in the base set), GUEST_CSUM, GUEST_ECN,
/// GUEST_TSO4, and GUEST_TSO6 when `tso6`.
fn rx_features(tso6: bool) -> u64 {
    let f = BASE_FEATURES
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_ECN);
    if tso6 {
        f | bit(VIRTIO_NET_F_GUEST_TSO6)
    } else {
        f
    }
}

#[test]
fn guest_tso6_ecn_packet_arrives_whole_in_merged_buffers() {
    // GUEST_TSO6 without GUEST_TSO4: the TAP must get TSO6 (and ECN) on its own.
    let features = BASE_FEATURES
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_ECN);
    let Some(mut r) = rig(
        "guest_tso6_ecn_packet_arrives_whole_in_merged_buffers",
        features,
    ) else {
        return;
    };
    r.g.post_rx(0, 40, 4096);
    let (hdr, frame, _) = tcpv6_ecn_gso(16_000);
    r.inject_gso(hdr, &frame, ETH_P_IPV6);
    let got = r.g.recv(0, 1, TIMEOUT);
    check_whole_gso(&r, &got[0], &frame);
    let s = r.d.wait_stats("one RX packet", STATS_TIMEOUT, |s| {
        s.queue(0, "rx_packets") == 1
    });
    assert_eq!(s.queue(0, "rx_bytes"), total_len(&[frame]), "{s}");
    r.expect_drops("no drops", &[], |_| true);
}

#[test]
fn guest_tso6_not_acked_the_tap_segments_tcpv6() {
    // Everything but GUEST_TSO6: the TAP keeps TSO4 and ECN, and must not claim TSO6,
    // so the kernel segments the TCP/IPv6 packet before the daemon reads it.
    let Some(mut r) = rig(
        "guest_tso6_not_acked_the_tap_segments_tcpv6",
        rx_features(false),
    ) else {
        return;
    };
    r.g.post_rx(0, 100, 2048);
    let (hdr, frame, payload) = tcpv6_ecn_gso(17_000);
    r.inject_gso(hdr, &frame, ETH_P_IPV6);
    let n = payload.len().div_ceil(usize::from(GSO_SIZE_V6));
    let got = r.g.recv_until(0, n, TIMEOUT);
    if got.len() == 1 && got[0].frame.len() > MTU_FRAME {
        r.d.fail(&format!(
            "GUEST_TSO6 not acked, yet a {}-byte GSO packet ({:?}) reached the guest: \
             TUNSETOFFLOAD left TSO6 on",
            got[0].frame.len(),
            got[0].hdr
        ));
    }
    check_segmented(&got, &payload);
    let s = r.d.wait_stats("every segment counted", STATS_TIMEOUT, |s| {
        s.queue(0, "rx_packets") == u64::try_from(n).unwrap()
    });
    let bytes: u64 = got
        .iter()
        .map(|p| u64::try_from(p.frame.len()).unwrap())
        .sum();
    assert_eq!(s.queue(0, "rx_bytes"), bytes, "{s}");
    r.expect_drops("no drops", &[], |_| true);
}

#[test]
fn tap_offloads_follow_the_features_of_each_connection() {
    // First connection: GUEST_TSO6 acked, the packet arrives whole. The guest
    // reconnects without GUEST_TSO6 (a new driver, same TAP): the daemon must clear
    // TSO6 on the TAP, and the same packet then arrives segmented.
    let Some(mut r) = rig(
        "tap_offloads_follow_the_features_of_each_connection",
        rx_features(true),
    ) else {
        return;
    };
    r.g.post_rx(0, 40, 4096);
    let (hdr, frame, _) = tcpv6_ecn_gso(18_000);
    r.inject_gso(hdr, &frame, ETH_P_IPV6);
    let got = r.g.recv(0, 1, TIMEOUT);
    check_whole_gso(&r, &got[0], &frame);

    r.g.cfg.features = rx_features(false);
    r.reconnect();
    r.g.post_rx(0, 100, 2048);
    let (hdr, frame, payload) = tcpv6_ecn_gso(18_100);
    r.inject_gso(hdr, &frame, ETH_P_IPV6);
    let n = payload.len().div_ceil(usize::from(GSO_SIZE_V6));
    // The first connection's unused 4 KiB buffers are still posted and come first.
    let got = r.g.recv_until(0, n, TIMEOUT);
    if got.len() == 1 && got[0].frame.len() > MTU_FRAME {
        r.d.fail(&format!(
            "reconnected without GUEST_TSO6, yet a {}-byte GSO packet ({:?}) reached \
             the guest: the TAP kept the first connection's TSO6 offload",
            got[0].frame.len(),
            got[0].hdr
        ));
    }
    check_segmented(&got, &payload);
}

/// The frame builders and parser agree: fields read back, a partial checksum does not
/// verify until completed, the IPv4 header checksum is right.
#[test]
fn tcp_frame_builders_are_self_consistent() {
    for ip in [IpVersion::V4, IpVersion::V6] {
        let mut f = tcp_frame(ip, GUEST_MAC, PEER_MAC, 7, TCP_ACK, &pattern(19_000, 333));
        let view = L4View::parse(&f).expect("parses");
        assert_eq!(view.tcp_seq(), Some(7));
        assert_eq!(view.tcp_flags(), Some(TCP_ACK));
        assert_eq!(view.tcp_payload(), Some(&pattern(19_000, 333)[..]));
        assert!(!view.checksum_ok(), "{ip:?}: a partial checksum verified");
        complete_csum(&mut f, ip.l4_offset(), TCP_CSUM_OFFSET);
        assert!(L4View::parse(&f).expect("parses").checksum_ok(), "{ip:?}");
        if ip == IpVersion::V4 {
            let iph = &f[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
            assert_eq!(common::packet::csum_fold(0, iph), 0xffff, "IPv4 header");
        }
    }
}
