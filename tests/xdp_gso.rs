// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! TCP segmentation on the AF_XDP uplink (issue 14) through the real daemon with `--xdp`
//! on a veth pair inside a fresh namespace. The guest acks CSUM, HOST_TSO4 and HOST_ECN,
//! plays a TCP handshake through its rings with a real listening socket on the peer's
//! end, then sends one 64 KB GSO packet: the peer's socket must read the whole stream
//! (the kernel accepted every segment, checksums verified in software: RX checksum
//! offload is off on the peer), and a capture on the peer sees MTU frames with the
//! headers each segment should have. A GSO packet whose headers lie is a counted drop.
//! On receive, TCP segments the peer sends reach a guest that acked GUEST_TSO4 and
//! GUEST_CSUM coalesced into one GSO packet, and a guest that did not as they were.
//! Needs root; without it each test says why it skips.

mod common;

use std::io::Read;
use std::net::{SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use common::guest::{bit, GuestConfig, TxLayout, BASE_FEATURES};
use common::packet::{
    csum_fold, pattern, test_frame, L4View, VnetHdr, ETH_HLEN, ETH_P_IP, ETH_P_TEST, GUEST_IP,
    GUEST_MAC, GUEST_MAC_STR, IPV4_HLEN, PEER_IP, PEER_MAC, TCP_ACK, TCP_CWR, TCP_PSH,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
};
use common::rig::Rig;
use common::{STATS_TIMEOUT, TIMEOUT};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

const XDP_END: &str = "vnmgso0";
const PEER_END: &str = "vnmgso1";
const PEER_PORT: u16 = 5201;
const GUEST_PORT: u16 = 40000;
const TCP_SYN: u8 = 0x02;
/// Segment size: 20 + 20 + 1448 + 12 bytes of room = a 1500-byte MTU.
const MSS: usize = 1448;
/// Payload of the GSO packet (capped by the window the peer offers).
const GSO_PAYLOAD: usize = 64_000;

/// An Ethernet + IPv4 + TCP frame from the guest to the peer: `seq`, `ack`, `flags`,
/// TCP `options` (a multiple of 4 bytes), `payload`. The TCP checksum is complete, or
/// with `partial` only the pseudo-header sum (a NEEDS_CSUM packet).
fn guest_tcp(
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
    partial: bool,
) -> Vec<u8> {
    tcp_v4(false, 0x4242, seq, ack, flags, options, payload, partial)
}

/// An Ethernet + IPv4 + TCP frame from the guest to the peer or, `to_guest`, the other
/// way, with IPv4 id `id` (see [`guest_tcp`] for the rest).
#[allow(clippy::too_many_arguments)]
fn tcp_v4(
    to_guest: bool,
    id: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
    partial: bool,
) -> Vec<u8> {
    let (src_mac, dst_mac, src_ip, dst_ip, sport, dport) = if to_guest {
        (
            PEER_MAC, GUEST_MAC, PEER_IP, GUEST_IP, PEER_PORT, GUEST_PORT,
        )
    } else {
        (
            GUEST_MAC, PEER_MAC, GUEST_IP, PEER_IP, GUEST_PORT, PEER_PORT,
        )
    };
    let tcp_len = 20 + options.len() + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&u16::try_from(20 + tcp_len).unwrap().to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&[0x40, 0x00, 64, 6, 0, 0]);
    ip.extend_from_slice(&src_ip);
    ip.extend_from_slice(&dst_ip);
    let c = !csum_fold(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    let doff = u8::try_from((20 + options.len()) / 4).unwrap();
    tcp.extend_from_slice(&[doff << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(options);
    tcp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src_ip);
    pseudo.extend_from_slice(&dst_ip);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&u16::try_from(tcp_len).unwrap().to_be_bytes());
    let seed = csum_fold(0, &pseudo);
    let c = if partial {
        seed
    } else {
        !csum_fold(u32::from(seed), &tcp)
    };
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

/// The header of a TSO packet built by [`guest_tcp`] (no options).
fn tso_hdr(gso_size: usize, ecn: bool) -> VnetHdr {
    let l4 = u16::try_from(ETH_HLEN + IPV4_HLEN).unwrap();
    VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | if ecn { VIRTIO_NET_HDR_GSO_ECN } else { 0 },
        hdr_len: l4 + 20,
        gso_size: u16::try_from(gso_size).unwrap(),
        csum_start: l4,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// Whether the IPv4 header of `frame` has a valid checksum.
fn ipv4_csum_ok(frame: &[u8]) -> bool {
    csum_fold(0, &frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN]) == 0xffff
}

#[test]
fn tso_packet_reaches_a_peer_tcp_socket_as_mtu_frames() {
    let cfg = GuestConfig {
        features: BASE_FEATURES
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_ECN),
        ..GuestConfig::default()
    };
    let Some(mut r) = Rig::on_veth(
        "tso_packet_reaches_a_peer_tcp_socket_as_mtu_frames",
        cfg,
        (XDP_END, PEER_END),
        None,
        &[],
    ) else {
        return;
    };
    let ns = r.ns();
    let mac = PEER_MAC.map(|b| format!("{b:02x}")).join(":");
    ns.ip(&["link", "set", PEER_END, "address", &mac]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", PEER_END]);
    ns.ip(&[
        "neigh",
        "add",
        "10.77.0.2",
        "lladdr",
        GUEST_MAC_STR,
        "dev",
        PEER_END,
    ]);
    // The peer's kernel checks every checksum itself.
    ns.exec(&["ethtool", "-K", PEER_END, "rx", "off"]);
    let cap = ns.packet_socket(PEER_END, ETH_P_IP, false);
    let addr = SocketAddrV4::new(PEER_IP.into(), PEER_PORT);
    let listener = ns.run_inside(|| TcpListener::bind(addr).expect("listen on the peer"));
    listener.set_nonblocking(true).unwrap();

    // The handshake, through the guest's rings.
    r.g.post_rx(0, 64, 2048);
    let isn: u32 = 0x7000_0000;
    let mss_opt = [2, 4, 0x05, 0xb4]; // MSS 1460
    r.g.add_tx(
        0,
        VnetHdr::default(),
        &guest_tcp(isn, 0, TCP_SYN, &mss_opt, &[], false),
        TxLayout::Split,
    );
    r.g.kick_tx(0);
    r.g.wait_tx(0, 1);
    let deadline = Instant::now() + TIMEOUT;
    let (peer_isn, window) = 'syn_ack: loop {
        assert!(Instant::now() < deadline, "no SYN-ACK from the peer");
        for p in r.g.recv_until(0, 1, Duration::from_millis(200)) {
            let Some(v) = L4View::parse(&p.frame) else {
                continue;
            };
            if v.proto == 6 && v.tcp_flags() == Some(TCP_SYN | TCP_ACK) {
                let win = usize::from(u16::from_be_bytes([v.l4[14], v.l4[15]]));
                break 'syn_ack (v.tcp_seq().unwrap(), win);
            }
        }
    };
    let (seq, ack) = (isn.wrapping_add(1), peer_isn.wrapping_add(1));
    r.g.add_tx(
        0,
        VnetHdr::default(),
        &guest_tcp(seq, ack, TCP_ACK, &[], &[], false),
        TxLayout::Single,
    );
    r.g.kick_tx(0);
    r.g.wait_tx(0, 1);
    let deadline = Instant::now() + TIMEOUT;
    let (mut stream, _) = loop {
        match listener.accept() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the peer never accepted");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };

    // One GSO packet as large as the peer's window lets it be, CWR set (ECN).
    let len = GSO_PAYLOAD.min(window);
    assert!(len > 20 * MSS, "the peer offers a window of only {window}");
    let data = pattern(14, len);
    let frame = guest_tcp(seq, ack, TCP_ACK | TCP_PSH | TCP_CWR, &[], &data, true);
    r.g.add_tx(0, tso_hdr(MSS, true), &frame, TxLayout::Split);
    r.g.kick_tx(0);
    r.g.wait_tx(0, 1);

    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = vec![0u8; len];
    stream
        .read_exact(&mut got)
        .unwrap_or_else(|e| r.d.fail(&format!("the peer's socket read: {e}")));
    assert!(
        got == data,
        "the stream the peer read differs from the payload"
    );

    // What arrived on the wire: MTU frames, one per segment, each as it should be.
    let segments = len.div_ceil(MSS);
    let mut seen = Vec::new();
    while let Some(f) = cap.recv(Duration::from_millis(500)) {
        let Some(v) = L4View::parse(&f) else {
            continue;
        };
        if f[6..12] == GUEST_MAC && v.proto == 6 && v.tcp_payload().is_some_and(|p| !p.is_empty()) {
            seen.push((f, v));
        }
    }
    assert_eq!(seen.len(), segments, "data frames at the peer");
    for (i, (f, v)) in seen.iter().enumerate() {
        let what = format!("segment {i} of {segments}");
        assert!(f.len() <= ETH_HLEN + 1500, "{what}: {} bytes", f.len());
        assert!(ipv4_csum_ok(f), "{what}: ipv4 header checksum");
        assert!(v.checksum_ok(), "{what}: tcp checksum");
        let id = u16::from_be_bytes([f[18], f[19]]);
        assert_eq!(
            id,
            0x4242u16.wrapping_add(u16::try_from(i).unwrap()),
            "{what}"
        );
        let off = i * MSS;
        assert_eq!(
            v.tcp_seq(),
            Some(seq.wrapping_add(u32::try_from(off).unwrap())),
            "{what}"
        );
        let mut flags = TCP_ACK;
        if i == 0 {
            flags |= TCP_CWR;
        }
        if i + 1 == segments {
            flags |= TCP_PSH;
        }
        assert_eq!(v.tcp_flags(), Some(flags), "{what}: flags");
        let end = (off + MSS).min(len);
        assert!(v.tcp_payload() == Some(&data[off..end]), "{what}: payload");
    }

    // More segments than the TX ring holds, packet after packet (retransmissions of the
    // same data, which the peer acknowledges again): every chain comes back, however
    // stale the ring's view of the kernel's progress gets.
    const RESENDS: usize = 60;
    for _ in 0..RESENDS {
        r.g.add_tx(0, tso_hdr(MSS, false), &frame, TxLayout::Single);
    }
    r.g.kick_tx(0);
    r.g.wait_tx(0, RESENDS);

    // A GSO packet whose IPv4 total length lies: counted, not sent.
    let mut lie = guest_tcp(seq, ack, TCP_ACK, &[], &data[..5000], true);
    lie[16..18].copy_from_slice(&1000u16.to_be_bytes());
    r.g.add_tx(0, tso_hdr(MSS, false), &lie, TxLayout::Single);
    r.g.kick_tx(0);
    r.g.wait_tx(0, 1);
    let s = r.d.wait_stats("gso counters", STATS_TIMEOUT, |s| {
        s.group_counter(Some(0), "xdp", "tx_gso_drop_header") == 1
    });
    println!("{s}");
    let packets = 1 + RESENDS;
    assert_eq!(
        s.group_counter(Some(0), "xdp", "tx_gso_packets"),
        u64::try_from(packets).unwrap(),
        "{s}"
    );
    assert_eq!(
        s.group_counter(Some(0), "xdp", "tx_gso_segments"),
        u64::try_from(packets * segments).unwrap(),
        "{s}"
    );
    // SYN, ACK and the segments.
    assert_eq!(
        s.group_counter(Some(0), "xdp", "tx_packets"),
        u64::try_from(packets * segments + 2).unwrap(),
        "{s}"
    );
    assert_eq!(s.group_counter(Some(0), "xdp", "tx_drop_gso"), 0, "{s}");
}

/// Segments of one flow from the peer, then a frame of another kind, all queued on the
/// XSK before the guest posts a buffer; what the guest receives.
fn peer_segments_to_guest(test: &str, features: u64, ends: (&str, &str)) -> Option<Received> {
    const SEGMENTS: usize = 30;
    let cfg = GuestConfig {
        features,
        ..GuestConfig::default()
    };
    let mut r = Rig::on_veth(test, cfg, ends, None, &[])?;
    let data = pattern(21, SEGMENTS * MSS);
    let seq0: u32 = 0xffff_0000;
    let mut frames: Vec<Vec<u8>> = data
        .chunks(MSS)
        .enumerate()
        .map(|(i, p)| {
            let flags = if i + 1 == SEGMENTS {
                TCP_ACK | TCP_PSH
            } else {
                TCP_ACK
            };
            let seq = seq0.wrapping_add(u32::try_from(i * MSS).unwrap());
            let id = 0x100 + u16::try_from(i).unwrap();
            tcp_v4(true, id, seq, 0x5555, flags, &[], p, false)
        })
        .collect();
    let other = test_frame(GUEST_MAC, PEER_MAC, 3, 200);
    frames.push(other.clone());
    r.inject(&frames, ETH_P_IP);
    // The worker reads the XSK only once the guest has buffers: let every frame land.
    std::thread::sleep(Duration::from_millis(300));
    r.g.post_rx(0, 128, 2048);
    let mut got = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    // Ours only (the peer's kernel may have sent IPv6 chatter first).
    while Instant::now() < deadline
        && !got
            .iter()
            .any(|p: &common::guest::RxPacket| p.frame == other)
    {
        for p in r.g.recv_until(0, 1, Duration::from_millis(200)) {
            let ethertype = u16::from_be_bytes([p.frame[12], p.frame[13]]);
            if ethertype == ETH_P_IP || ethertype == ETH_P_TEST {
                got.push(p);
            }
        }
    }
    let s = r.d.wait_stats("rx counters", STATS_TIMEOUT, |s| {
        s.group_counter(Some(0), "xdp", "rx_packets") >= u64::try_from(got.len()).unwrap()
    });
    println!("{s}");
    let super_packet = tcp_v4(
        true,
        0x100,
        seq0,
        0x5555,
        TCP_ACK | TCP_PSH,
        &[],
        &data,
        true,
    );
    Some(Received {
        got,
        segments: frames[..SEGMENTS].to_vec(),
        super_packet,
        other,
        gro_packets: s.group_counter(Some(0), "xdp", "rx_gro_packets"),
        gro_segments: s.group_counter(Some(0), "xdp", "rx_gro_segments"),
    })
}

struct Received {
    got: Vec<common::guest::RxPacket>,
    segments: Vec<Vec<u8>>,
    super_packet: Vec<u8>,
    other: Vec<u8>,
    gro_packets: u64,
    gro_segments: u64,
}

#[test]
fn peer_segments_reach_a_gso_guest_coalesced() {
    let features = BASE_FEATURES
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6);
    let Some(r) = peer_segments_to_guest(
        "peer_segments_reach_a_gso_guest_coalesced",
        features,
        ("vnmgro0", "vnmgro1"),
    ) else {
        return;
    };
    let frames: Vec<usize> = r.got.iter().map(|p| p.frame.len()).collect();
    assert_eq!(r.got.len(), 2, "packets received: {frames:?}");
    let p = &r.got[0];
    assert!(
        p.frame == r.super_packet,
        "the coalesced packet differs ({} bytes)",
        p.frame.len()
    );
    let want = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: u16::try_from(MSS).unwrap(),
        csum_start: 34,
        csum_offset: 16,
        num_buffers: p.hdr.num_buffers,
    };
    assert_eq!(p.hdr, want);
    // The frame after the flow was held, then delivered as it is.
    assert_eq!(r.got[1].frame, r.other);
    assert_eq!(r.got[1].hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE);
    assert_eq!((r.gro_packets, r.gro_segments), (1, 30));
}

#[test]
fn peer_segments_reach_a_plain_guest_as_they_are() {
    let Some(r) = peer_segments_to_guest(
        "peer_segments_reach_a_plain_guest_as_they_are",
        BASE_FEATURES | bit(VIRTIO_NET_F_GUEST_CSUM),
        ("vnmgro2", "vnmgro3"),
    ) else {
        return;
    };
    let want: Vec<&Vec<u8>> = r.segments.iter().chain([&r.other]).collect();
    let got: Vec<&Vec<u8>> = r.got.iter().map(|p| &p.frame).collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "frames differ");
    assert!(r
        .got
        .iter()
        .all(|p| p.hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE && p.hdr.flags == 0));
    assert_eq!((r.gro_packets, r.gro_segments), (0, 0));
}
