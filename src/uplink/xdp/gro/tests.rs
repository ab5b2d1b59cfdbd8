// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Coalescing against segments built here, and against the segmenter: a super-packet
//! cut by `gso` and put together again by `gro` must come back byte for byte.

use proptest::prelude::*;

use super::*;
use crate::netmem::{Frag, FragList, NetmemRef};
use crate::uplink::xdp::gso::{GsoPacket, PacketReader};

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// The test's own checksum: 16-bit words, folded, inverted.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut bytes: Vec<u8> = parts.concat();
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = 0;
    for w in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

/// A TCP frame (IPv4 id `id`, or IPv6) with `payload`; the TCP checksum complete or,
/// with `partial`, the pseudo-header sum (what a GSO packet carries).
fn frame(v6: bool, id: u16, seq: u32, flags: u8, payload: &[u8], partial: bool) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&5201u16.to_be_bytes());
    tcp.extend_from_slice(&40000u16.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
    // Data offset 8 words: 12 bytes of options (NOP NOP timestamps).
    tcp.extend_from_slice(&[0x80, flags, 0x02, 0x00, 0, 0, 0, 0]);
    tcp.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
    tcp.extend_from_slice(payload);
    let l4_len = u16::try_from(tcp.len()).unwrap();
    let pseudo = if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&l4_len.to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        let (src, dst) = ([0xfdu8; 16], [0xfeu8; 16]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        [&src[..], &dst[..], &[0, 0], &l4_len.to_be_bytes(), &[0, 6]].concat()
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(20 + l4_len).to_be_bytes());
        ip.extend_from_slice(&id.to_be_bytes());
        ip.extend_from_slice(&[0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        [&ip[12..20], &[0, 6], &l4_len.to_be_bytes()].concat()
    };
    let c = if partial {
        !checksum(&[&pseudo])
    } else {
        checksum(&[&pseudo, &tcp])
    };
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

const HDR_V4: usize = 14 + 20 + 32;
const HDR_V6: usize = 14 + 40 + 32;

#[test]
fn parses_segments_that_may_be_coalesced() {
    let s = TcpSegment::parse(&frame(false, 1, 1000, ACK, &[7; 100], false)).unwrap();
    assert_eq!(
        (s.hdr_len, s.seq, s.payload, s.psh),
        (HDR_V4, 1000, 100, false)
    );
    assert!(!s.v6());
    let s = TcpSegment::parse(&frame(true, 0, 5, ACK | PSH, &[7; 33], false)).unwrap();
    assert_eq!((s.hdr_len, s.seq, s.payload, s.psh), (HDR_V6, 5, 33, true));
    assert!(s.v6());
}

#[test]
fn refuses_what_must_not_be_coalesced() {
    let good = frame(false, 1, 1000, ACK, &[7; 100], false);
    let refused = |f: &[u8]| TcpSegment::parse(f).is_none();
    for flags in [0x01, 0x02, 0x04, 0x20, 0x40, 0x80, 0] {
        // FIN, SYN, RST, URG, ECE, CWR, no ACK.
        assert!(
            refused(&frame(
                false,
                1,
                1,
                flags | if flags == 0 { 0 } else { ACK },
                &[1; 10],
                false
            )),
            "flags {flags:#x}"
        );
    }
    assert!(refused(&frame(false, 1, 1, ACK, &[], false)), "no payload");
    let mut bad = good.clone();
    bad[80] ^= 1;
    assert!(refused(&bad), "tcp checksum");
    let mut bad = good.clone();
    bad[22] ^= 1; // TTL: the IPv4 header checksum no longer holds
    assert!(refused(&bad), "ipv4 checksum");
    let mut padded = good.clone();
    padded.push(0);
    assert!(refused(&padded), "longer than the IP header says");
    assert!(
        refused(&good[..good.len() - 1]),
        "shorter than the IP header says"
    );
    let mut frag = frame(false, 1, 1, ACK, &[1; 10], false);
    frag[20] |= 0x20; // more fragments (the IPv4 checksum breaks too; either refuses)
    assert!(refused(&frag));
    let mut v6 = frame(true, 0, 1, ACK, &[1; 10], false);
    v6[20] = 0; // next header hop-by-hop
    assert!(refused(&v6), "ipv6 extension header");
    let mut vlan = good.clone();
    vlan.splice(12..12, [0x81, 0x00, 0, 1]);
    assert!(refused(&vlan), "vlan");
    assert!(refused(&good[..40]));
}

#[test]
fn continues_only_the_same_flow_in_order() {
    let first = frame(false, 1, 1000, ACK, &[1; 100], false);
    let f = TcpSegment::parse(&first).unwrap();
    let head = &first[..f.hdr_len];
    let check = |next: &[u8], seq: u32| {
        let n = TcpSegment::parse(next).unwrap();
        f.continues(head, &n, next, seq)
    };
    // Another id, PSH, a shorter payload: still the flow's next segment.
    assert!(check(&frame(false, 2, 1100, ACK, &[2; 100], false), 1100));
    assert!(check(
        &frame(false, 9, 1100, ACK | PSH, &[2; 40], false),
        1100
    ));
    // Out of order, a larger payload.
    assert!(!check(&frame(false, 2, 1200, ACK, &[2; 100], false), 1100));
    assert!(!check(&frame(false, 2, 1100, ACK, &[2; 101], false), 1100));
    // Any other header byte differing: a port, the ack, the window, an option, the TTL.
    let next = frame(false, 2, 1100, ACK, &[2; 100], false);
    for (at, what) in [
        (35, "port"),
        (45, "ack"),
        (49, "window"),
        (61, "timestamp"),
        (22, "ttl"),
        (15, "tos"),
    ] {
        let mut other = next.clone();
        other[at] ^= 1;
        // Keep the checksums right so only the comparison can refuse it.
        let payload = other[HDR_V4..].to_vec();
        let n = TcpSegment { seq: 1100, ..f };
        assert!(!f.continues(head, &n, &other, 1100), "{what} differs");
        drop(payload);
    }
    // IPv4 and IPv6 do not mix.
    let v6 = frame(true, 0, 1100, ACK, &[2; 100], false);
    assert!(!check(&v6, 1100));
}

#[test]
fn fits_ip_lengths() {
    let f = TcpSegment::parse(&frame(false, 1, 0, ACK, &[0; 1448], false)).unwrap();
    assert!(f.fits(14 + 65000, 535));
    assert!(!f.fits(14 + 65000, 536));
    let f = TcpSegment::parse(&frame(true, 0, 0, ACK, &[0; 1448], false)).unwrap();
    assert!(f.fits(54 + 65000, 535));
    assert!(!f.fits(54 + 65000, 536));
}

/// Coalesce `segments` as the queue does: the first's headers, the payloads after it.
fn coalesce(segments: &[Vec<u8>]) -> Option<(VirtioNetHdr, Vec<u8>)> {
    let first = TcpSegment::parse(&segments[0])?;
    let mut out = segments[0].clone();
    let mut seq = first
        .seq
        .wrapping_add(u32::try_from(first.payload).unwrap());
    let mut psh = first.psh;
    for s in &segments[1..] {
        let n = TcpSegment::parse(s)?;
        if psh
            || !first.continues(&out[..first.hdr_len], &n, s, seq)
            || !first.fits(out.len(), n.payload)
        {
            return None;
        }
        out.extend_from_slice(&s[n.hdr_len..]);
        seq = seq.wrapping_add(u32::try_from(n.payload).unwrap());
        psh = n.psh;
    }
    let len = out.len();
    let hdr = first.finish(&mut out, len, psh)?;
    Some((hdr, out))
}

/// Cut `packet` (a GSO packet of `mss` segments) with the segmenter.
fn segment(packet: &[u8], v6: bool, mss: u16) -> Vec<Vec<u8>> {
    let hdr_len = if v6 { HDR_V6 } else { HDR_V4 };
    let vnet = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        },
        hdr_len: u16::try_from(hdr_len).unwrap(),
        gso_size: mss,
        csum_start: u16::try_from(hdr_len - 32).unwrap(),
        csum_offset: 16,
        num_buffers: 0,
    };
    let mut buf = packet.to_vec();
    let mut pkt = FragList::new();
    let frag = Frag {
        netmem: NetmemRef::page(0, 0),
        offset: 0,
        len: u32::try_from(buf.len()).unwrap(),
    };
    // SAFETY: `buf` is borrowed mutably for the list's lifetime and is exactly
    // `frag.len` bytes long.
    unsafe { pkt.push_unchecked(frag, buf.as_mut_ptr()) };
    let gso = GsoPacket::parse(&vnet, &pkt, 4096, 2048).unwrap();
    let mut reader = PacketReader::new(&pkt);
    (0..gso.segments())
        .map(|i| {
            let mut f = vec![0u8; 4096];
            let n = gso.write_segment(i, &mut reader, &mut f).unwrap();
            f.truncate(n);
            f
        })
        .collect()
}

#[test]
fn finish_writes_the_headers_of_the_whole_packet() {
    let payload: Vec<u8> = (0..3000u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    let segs: Vec<Vec<u8>> = payload
        .chunks(1000)
        .enumerate()
        .map(|(i, p)| {
            let flags = if i == 2 { ACK | PSH } else { ACK };
            let seq = 77 + u32::try_from(i * 1000).unwrap();
            frame(false, 40 + u16::try_from(i).unwrap(), seq, flags, p, false)
        })
        .collect();
    let (hdr, got) = coalesce(&segs).unwrap();
    assert_eq!(got, frame(false, 40, 77, ACK | PSH, &payload, true));
    assert_eq!(
        hdr,
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: u16::try_from(HDR_V4).unwrap(),
            gso_size: 1000,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    );
}

proptest! {
    #[test]
    fn segmenting_then_coalescing_gives_the_packet_back(
        v6: bool,
        len in 2usize..30000,
        mss in 1usize..2000,
        psh: bool,
    ) {
        prop_assume!(len.div_ceil(mss) >= 2 && len.div_ceil(mss) <= 2048);
        let payload: Vec<u8> = (0..len).map(|i| u8::try_from((i * 13) % 256).unwrap()).collect();
        let flags = if psh { ACK | PSH } else { ACK };
        let packet = frame(v6, 0x1234, 0xffff_ff00, flags, &payload, true);
        let segs = segment(&packet, v6, u16::try_from(mss).unwrap());
        let (hdr, got) = coalesce(&segs).expect("the segments coalesce");
        prop_assert_eq!(got, packet);
        prop_assert_eq!(usize::from(hdr.gso_size), mss);
        prop_assert_eq!(usize::from(hdr.hdr_len), if v6 { HDR_V6 } else { HDR_V4 });
    }

    #[test]
    fn any_frame_parses_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut f = bytes.clone();
        if f.len() > 14 {
            f[12] = 0x08;
            f[13] = 0x00;
            f[14] = 0x45;
        }
        if let Some(s) = TcpSegment::parse(&f) {
            prop_assert!(s.hdr_len + s.payload == f.len());
            let mut head = f.clone();
            let _ = s.finish(&mut head, f.len(), s.psh);
        }
    }
}
