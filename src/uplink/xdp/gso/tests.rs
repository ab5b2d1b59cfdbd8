// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The segmenter against packets built here: every segment is compared byte for byte
//! with a frame built from scratch for that segment, its lengths and checksums computed
//! here independently of `csum`.

use proptest::prelude::*;

use super::*;
use crate::netmem::{Frag, NetmemRef};
use crate::virtio::header::VIRTIO_NET_HDR_GSO_UDP;

const FRAME: usize = 4096;
const SRC4: [u8; 4] = [10, 1, 0, 1];
const DST4: [u8; 4] = [10, 1, 0, 2];
const SRC6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const ACK: u8 = 0x10;

/// The test's own ones' complement checksum: 16-bit words, folded, inverted.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
    }
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

/// What a test packet looks like.
#[derive(Clone, Debug)]
struct Shape {
    v6: bool,
    vlan: bool,
    /// IPv4 options or IPv6 extension headers (already encoded; `ext_proto` is the
    /// next-header value naming the first one).
    ext: Vec<u8>,
    ext_proto: u8,
    /// TCP options (a multiple of 4 bytes).
    tcp_opts: Vec<u8>,
}

impl Shape {
    fn v4() -> Shape {
        Shape {
            v6: false,
            vlan: false,
            ext: Vec::new(),
            ext_proto: 6,
            tcp_opts: Vec::new(),
        }
    }

    fn v6() -> Shape {
        Shape {
            v6: true,
            ..Shape::v4()
        }
    }

    fn l3(&self) -> usize {
        if self.vlan {
            18
        } else {
            14
        }
    }

    fn l4(&self) -> usize {
        self.l3() + if self.v6 { 40 } else { 20 } + self.ext.len()
    }

    fn hdr_len(&self) -> usize {
        self.l4() + 20 + self.tcp_opts.len()
    }

    /// A frame of this shape with IPv4 id `id`, TCP `seq` and `flags`, `payload`:
    /// lengths exact, both checksums complete (`good`) or garbage.
    fn frame(&self, id: u16, seq: u32, flags: u8, payload: &[u8], good: bool) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        if self.vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
        }
        let tcp_len = 20 + self.tcp_opts.len() + payload.len();
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&40000u16.to_be_bytes());
        tcp.extend_from_slice(&5201u16.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        let doff = u8::try_from((20 + self.tcp_opts.len()) / 4).unwrap();
        tcp.extend_from_slice(&[doff << 4, flags, 0x01, 0x00, 0, 0, 0, 0]);
        tcp.extend_from_slice(&self.tcp_opts);
        tcp.extend_from_slice(payload);
        let len16 = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
        let pseudo: Vec<u8> = if self.v6 {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0x60, 0x0a, 0xbc, 0xde];
            ip.extend_from_slice(&len16(self.ext.len() + tcp_len));
            ip.extend_from_slice(&[self.ext_proto, 64]);
            ip.extend_from_slice(&SRC6);
            ip.extend_from_slice(&DST6);
            f.extend_from_slice(&ip);
            f.extend_from_slice(&self.ext);
            let mut p = Vec::new();
            p.extend_from_slice(&SRC6);
            p.extend_from_slice(&DST6);
            p.extend_from_slice(&u32::try_from(tcp_len).unwrap().to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 6]);
            p
        } else {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let ihl = u8::try_from((20 + self.ext.len()) / 4).unwrap();
            let mut ip = vec![0x40 | ihl, 0x02];
            ip.extend_from_slice(&len16(20 + self.ext.len() + tcp_len));
            ip.extend_from_slice(&id.to_be_bytes());
            ip.extend_from_slice(&[0x40, 0x00, 64, 6, 0, 0]);
            ip.extend_from_slice(&SRC4);
            ip.extend_from_slice(&DST4);
            ip.extend_from_slice(&self.ext);
            let c = if good { checksum(&[&ip]) } else { 0xbeef };
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            let mut p = Vec::new();
            p.extend_from_slice(&SRC4);
            p.extend_from_slice(&DST4);
            p.extend_from_slice(&[0, 6]);
            p.extend_from_slice(&len16(tcp_len));
            p
        };
        let c = if good {
            checksum(&[&pseudo, &tcp])
        } else {
            0x5a5a
        };
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&tcp);
        f
    }

    fn gso_type(&self, ecn: bool) -> u8 {
        let t = if self.v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        if ecn {
            t | VIRTIO_NET_HDR_GSO_ECN
        } else {
            t
        }
    }

    /// The virtio header a guest sends with such a packet.
    fn vnet(&self, gso_size: u16, ecn: bool) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: self.gso_type(ecn),
            hdr_len: u16::try_from(self.hdr_len()).unwrap(),
            gso_size,
            csum_start: u16::try_from(self.l4()).unwrap(),
            csum_offset: 16,
            num_buffers: 0,
        }
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 7 + i / 251) % 256).unwrap())
        .collect()
}

/// `data` as a FragList cut at `cuts` (offsets into `data`), as guest buffers would be.
fn frags<'a>(bufs: &'a mut Vec<Vec<u8>>, data: &[u8], cuts: &[usize]) -> FragList<'a> {
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
    points.sort_unstable();
    points.push(data.len());
    for p in points {
        if p > at {
            bufs.push(data[at..p].to_vec());
            at = p;
        }
    }
    let mut l = FragList::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let frag = Frag {
            netmem: NetmemRef::page(0, u64::try_from(i).unwrap()),
            offset: 0,
            len: u32::try_from(b.len()).unwrap(),
        };
        // SAFETY: each buffer is borrowed mutably for the list's lifetime and is
        // exactly `frag.len` bytes long.
        unsafe { l.push_unchecked(frag, b.as_mut_ptr()) };
    }
    l
}

/// Segment `pkt` with `hdr`: every segment as the bytes written into a frame.
fn segment(hdr: &VirtioNetHdr, pkt: &FragList<'_>) -> Result<Vec<Vec<u8>>, GsoError> {
    let gso = GsoPacket::parse(hdr, pkt, FRAME, 2048)?;
    let mut reader = PacketReader::new(pkt);
    let mut out = Vec::new();
    for i in 0..gso.segments() {
        // A frame full of junk: the segment must overwrite all it claims.
        let mut frame = vec![0xa5u8; FRAME];
        let n = gso
            .write_segment(i, &mut reader, &mut frame)
            .expect("segment");
        assert_eq!(n, gso.segment_len(i));
        frame.truncate(n);
        out.push(frame);
    }
    Ok(out)
}

/// Segment a packet of `shape` carrying `len` payload bytes with TCP `flags` into
/// `mss` pieces, and check every segment against one built from scratch.
fn check(shape: &Shape, len: usize, mss: usize, flags: u8, ecn: bool, cuts: &[usize]) {
    let data = payload(len);
    let (id, seq) = (0xfffe, 0xffff_f000);
    let pkt_bytes = shape.frame(id, seq, flags, &data, false);
    let mut bufs = Vec::new();
    let pkt = frags(&mut bufs, &pkt_bytes, cuts);
    let hdr = shape.vnet(u16::try_from(mss).unwrap(), ecn);
    let got = segment(&hdr, &pkt).expect("segmented");
    let pieces: Vec<&[u8]> = data.chunks(mss).collect();
    assert_eq!(got.len(), pieces.len(), "segment count");
    for (i, piece) in pieces.iter().enumerate() {
        let mut f = flags;
        if i + 1 != pieces.len() {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            f &= !TCP_CWR;
        }
        let off = u32::try_from(i * mss).unwrap();
        let want = shape.frame(
            id.wrapping_add(u16::try_from(i).unwrap()),
            seq.wrapping_add(off),
            f,
            piece,
            true,
        );
        assert_eq!(got[i], want, "segment {i} of {}", pieces.len());
    }
}

#[test]
fn ipv4_segments_byte_for_byte() {
    check(&Shape::v4(), 4000, 1448, ACK | TCP_PSH, false, &[]);
}

#[test]
fn ipv6_segments_byte_for_byte() {
    check(
        &Shape::v6(),
        4000,
        1428,
        ACK | TCP_PSH | TCP_FIN,
        false,
        &[],
    );
}

#[test]
fn cwr_only_on_the_first_segment_fin_psh_only_on_the_last() {
    for shape in [Shape::v4(), Shape::v6()] {
        check(
            &shape,
            5000,
            1000,
            ACK | TCP_CWR | TCP_PSH | TCP_FIN,
            true,
            &[],
        );
        check(&shape, 5000, 1000, ACK | TCP_CWR, false, &[]);
    }
}

#[test]
fn payload_a_multiple_of_gso_size_and_not() {
    check(&Shape::v4(), 3 * 1448, 1448, ACK, false, &[]);
    check(&Shape::v4(), 3 * 1448 + 1, 1448, ACK, false, &[]);
    check(&Shape::v6(), 3 * 1448 - 1, 1448, ACK, false, &[]);
}

#[test]
fn one_segment() {
    check(&Shape::v4(), 100, 1448, ACK | TCP_PSH, false, &[]);
    check(&Shape::v6(), 1448, 1448, ACK | TCP_PSH, false, &[]);
}

#[test]
fn vlan_options_and_extension_headers() {
    let mut s = Shape::v4();
    s.vlan = true;
    s.ext = vec![1, 1, 1, 0]; // two NOPs and an end of list: 4 bytes of options
    s.tcp_opts = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps
    check(&s, 3000, 1000, ACK, false, &[]);
    let mut s = Shape::v6();
    // Hop-by-hop (8 bytes, PadN) then destination options (16 bytes) then TCP.
    s.ext = vec![
        60, 0, 1, 4, 0, 0, 0, 0, 6, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    s.ext_proto = 0;
    s.tcp_opts = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    check(&s, 3000, 1000, ACK, false, &[]);
}

#[test]
fn headers_and_payload_across_frags() {
    // A cut inside the Ethernet header, inside TCP, and several inside the payload.
    check(
        &Shape::v4(),
        4000,
        1000,
        ACK,
        false,
        &[5, 40, 60, 1061, 1062, 3001],
    );
    check(
        &Shape::v6(),
        4000,
        999,
        ACK,
        false,
        &[1, 2, 3, 77, 500, 2000, 2001],
    );
}

#[test]
fn segments_need_not_be_written_in_order() {
    let s = Shape::v4();
    let data = payload(3000);
    let bytes = s.frame(1, 1, ACK, &data, false);
    let mut bufs = Vec::new();
    let pkt = frags(&mut bufs, &bytes, &[100, 2000]);
    let hdr = s.vnet(1000, false);
    let in_order = segment(&hdr, &pkt).unwrap();
    let gso = GsoPacket::parse(&hdr, &pkt, FRAME, 2048).unwrap();
    let mut reader = PacketReader::new(&pkt);
    for i in [2, 0, 1] {
        let mut frame = vec![0u8; FRAME];
        let n = gso.write_segment(i, &mut reader, &mut frame).unwrap();
        assert_eq!(frame[..n], in_order[i][..], "segment {i}");
    }
    let mut small = vec![0u8; gso.segment_len(0) - 1];
    assert_eq!(gso.write_segment(0, &mut reader, &mut small), None);
    assert_eq!(gso.write_segment(3, &mut reader, &mut [0u8; FRAME]), None);
}

/// Parse a packet of `bytes` with `hdr`.
fn parse(hdr: &VirtioNetHdr, bytes: &[u8], max: u32) -> Result<usize, GsoError> {
    let mut bufs = Vec::new();
    let pkt = frags(&mut bufs, bytes, &[]);
    GsoPacket::parse(hdr, &pkt, FRAME, max).map(|g| g.segments())
}

#[test]
fn hostile_packets_are_refused_by_reason() {
    let s = Shape::v4();
    let good = s.frame(1, 1, ACK, &payload(3000), false);
    let hdr = s.vnet(1000, false);
    assert_eq!(parse(&hdr, &good, 2048), Ok(3));

    let zero = VirtioNetHdr { gso_size: 0, ..hdr };
    assert_eq!(parse(&zero, &good, 2048), Err(GsoError::GsoSize));
    let beyond = VirtioNetHdr {
        hdr_len: 4000,
        ..hdr
    };
    assert!(matches!(
        parse(&beyond, &good, 2048),
        Err(GsoError::HdrLen { hdr_len: 4000, .. })
    ));
    let udp = VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_UDP,
        ..hdr
    };
    assert_eq!(parse(&udp, &good, 2048), Err(GsoError::GsoType(3)));
    let v6 = VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
        ..hdr
    };
    assert!(matches!(parse(&v6, &good, 2048), Err(GsoError::Header(_))));
    let csum = VirtioNetHdr {
        csum_start: 30,
        ..hdr
    };
    assert!(matches!(
        parse(&csum, &good, 2048),
        Err(GsoError::Header(_))
    ));

    // Headers that lie about lengths.
    let mut lie = good.clone();
    lie[16..18].copy_from_slice(&60000u16.to_be_bytes());
    assert!(matches!(parse(&hdr, &lie, 2048), Err(GsoError::Header(_))));
    let mut lie = good.clone();
    lie[14] = 0x44; // IHL 4
    assert!(matches!(parse(&hdr, &lie, 2048), Err(GsoError::Header(_))));
    let mut lie = good.clone();
    lie[46] = 0x40; // TCP data offset 4
    assert!(matches!(parse(&hdr, &lie, 2048), Err(GsoError::Header(_))));
    let mut frag = good.clone();
    frag[20] = 0x20; // more fragments
    assert!(matches!(parse(&hdr, &frag, 2048), Err(GsoError::Header(_))));
    // Headers only, or cut inside them.
    let bare = s.frame(1, 1, ACK, &[], false);
    assert!(matches!(parse(&hdr, &bare, 2048), Err(GsoError::Header(_))));
    let mut cut = bare.clone();
    cut.truncate(50);
    let cut_hdr = VirtioNetHdr { hdr_len: 0, ..hdr };
    assert!(matches!(
        parse(&cut_hdr, &cut, 2048),
        Err(GsoError::Header(_))
    ));
    // A TCP header whose options run past the packet: data offset 15 (60 bytes) with
    // 30 bytes of payload.
    let mut long = s.frame(1, 1, ACK, &payload(30), false);
    long[46] = 0xf0;
    let long_hdr = VirtioNetHdr { hdr_len: 0, ..hdr };
    assert!(matches!(
        parse(&long_hdr, &long, 2048),
        Err(GsoError::Header(_))
    ));

    // Oversized: a segment beyond a frame, more segments than the ring holds.
    let big = VirtioNetHdr {
        gso_size: 4096,
        ..hdr
    };
    let large = s.frame(1, 1, ACK, &payload(6000), false);
    assert_eq!(
        parse(&big, &large, 2048),
        Err(GsoError::SegmentSize {
            seg: 54 + 4096,
            frame: FRAME
        })
    );
    // One segment may be as large as a frame.
    let whole = VirtioNetHdr {
        gso_size: u16::try_from(FRAME - 54).unwrap(),
        ..hdr
    };
    assert_eq!(parse(&whole, &large, 2048), Ok(2));
    let tiny = VirtioNetHdr { gso_size: 1, ..hdr };
    assert_eq!(
        parse(&tiny, &good, 2048),
        Err(GsoError::Segments {
            segments: 3000,
            max: 2048
        })
    );
}

#[test]
fn ipv6_extension_headers_not_parsed_are_refused() {
    for ext in [43u8, 44, 51] {
        let mut s = Shape::v6();
        s.ext = vec![6, 0, 0, 0, 0, 0, 0, 0];
        s.ext_proto = ext;
        let bytes = s.frame(0, 1, ACK, &payload(2000), false);
        assert_eq!(
            parse(&s.vnet(1000, false), &bytes, 2048),
            Err(GsoError::Ipv6Extension(ext))
        );
    }
    // A jumbogram's zero payload length disagrees with the packet.
    let s = Shape::v6();
    let mut bytes = s.frame(0, 1, ACK, &payload(2000), false);
    bytes[18..20].copy_from_slice(&[0, 0]);
    assert!(matches!(
        parse(&s.vnet(1000, false), &bytes, 2048),
        Err(GsoError::Header(_))
    ));
}

proptest! {
    #[test]
    fn any_size_and_split_segments_exactly(
        v6: bool,
        len in 1usize..20000,
        mss in 1usize..3000,
        cuts in proptest::collection::vec(0usize..20100, 0..6),
    ) {
        let shape = if v6 { Shape::v6() } else { Shape::v4() };
        prop_assume!(len.div_ceil(mss) <= 2048);
        check(&shape, len, mss, ACK | TCP_PSH, false, &cuts);
    }

    #[test]
    fn random_headers_never_panic_or_overrun(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        tail in 0usize..5000,
        gso_type in prop_oneof![Just(1u8), Just(4u8), Just(0x81u8), Just(0x84u8), any::<u8>()],
        hdr_len: u16,
        gso_size: u16,
        csum_start in 0u16..300,
    ) {
        let mut data = bytes.clone();
        data.resize(bytes.len() + tail, 0x33);
        // Often a plausible start, so parsing gets past the first checks.
        if data.len() > 14 && gso_size % 2 == 0 {
            data[12..14].copy_from_slice(if gso_type & 4 != 0 { &[0x86, 0xdd] } else { &[8, 0] });
            data[14] = if gso_type & 4 != 0 { 0x60 } else { 0x45 };
        }
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len,
            gso_size,
            csum_start,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut bufs = Vec::new();
        let pkt = frags(&mut bufs, &data, &[7, 33, 200]);
        if let Ok(gso) = GsoPacket::parse(&hdr, &pkt, FRAME, 2048) {
            let mut reader = PacketReader::new(&pkt);
            let mut total = 0;
            for i in 0..gso.segments() {
                let mut frame = vec![0u8; FRAME];
                let n = gso.write_segment(i, &mut reader, &mut frame);
                prop_assert_eq!(n, Some(gso.segment_len(i)));
                prop_assert!(gso.segment_len(i) <= FRAME);
                total += gso.segment_len(i) - gso.hdr_len;
            }
            prop_assert_eq!(total + gso.hdr_len, data.len());
        }
    }
}
