// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Frame builders and the virtio-net header as the tests see it.

/// A local experimental EtherType (IEEE 802 "local experimental 1") for raw test frames.
pub const ETH_P_TEST: u16 = 0x88b5;
/// IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// The MAC the tests give the guest (`--mac`).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// `--mac` spelling of [`GUEST_MAC`].
pub const GUEST_MAC_STR: &str = "52:54:00:12:34:56";
/// The MAC of "the network" (frames injected on the TAP come from here).
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];

/// Size of the virtio-net header on the rings (VERSION_1 / MRG_RXBUF layout).
pub const VNET_HDR_LEN: usize = 12;

/// `flags`: checksum still to be computed from `csum_start`.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: none.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;

/// `virtio_net_hdr_v1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// Flags.
    pub flags: u8,
    /// GSO type.
    pub gso_type: u8,
    /// Header length.
    pub hdr_len: u16,
    /// Segment size.
    pub gso_size: u16,
    /// Checksum start.
    pub csum_start: u16,
    /// Checksum offset from `csum_start`.
    pub csum_offset: u16,
    /// Merged buffers.
    pub num_buffers: u16,
}

impl VnetHdr {
    /// The 12 wire bytes.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// The 10 bytes of the legacy `virtio_net_hdr` (what `PACKET_VNET_HDR` uses).
    pub fn to_bytes10(self) -> [u8; 10] {
        let b = self.to_bytes();
        b[..10].try_into().expect("10 bytes")
    }

    /// Parse 12 wire bytes.
    pub fn from_bytes(b: &[u8]) -> VnetHdr {
        assert!(b.len() >= VNET_HDR_LEN, "short virtio-net header");
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift32) for payloads: every frame of a test
/// gets its own seed, so a misplaced or corrupted byte shows.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// An Ethernet header.
pub fn eth_header(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(14);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A raw test frame of `len` bytes in total (>= 14), EtherType [`ETH_P_TEST`].
pub fn test_frame(dst: [u8; 6], src: [u8; 6], seed: u32, len: usize) -> Vec<u8> {
    assert!(len >= 14, "a frame has a 14-byte header");
    let mut f = eth_header(dst, src, ETH_P_TEST);
    f.extend(pattern(seed, len - 14));
    f
}

/// The Internet checksum of `data` (RFC 1071), starting from `sum`.
pub fn csum_fold(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).expect("folded to 16 bits")
}

fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize) -> Vec<u8> {
    let total = u16::try_from(20 + payload_len).expect("IPv4 packet fits 64 KiB");
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = !csum_fold(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// Source address of the test IPv4 packets.
pub const PEER_IP: [u8; 4] = [10, 77, 0, 1];
/// Destination address of the test IPv4 packets.
pub const GUEST_IP: [u8; 4] = [10, 77, 0, 2];

/// An Ethernet + IPv4 + TCP frame (ACK|PSH) with `payload`. The TCP checksum field
/// holds the pseudo-header sum, as it does for a CHECKSUM_PARTIAL (NEEDS_CSUM) packet.
pub fn ipv4_tcp_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = eth_header(dst, src, ETH_P_IP);
    f.extend(ipv4_header(PEER_IP, GUEST_IP, 6, 20 + payload.len()));
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&40000u16.to_be_bytes());
    tcp.extend_from_slice(&5201u16.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    let tcp_len = u16::try_from(20 + payload.len()).expect("fits");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&PEER_IP);
    pseudo.extend_from_slice(&GUEST_IP);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    let partial = csum_fold(0, &pseudo);
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    f.extend(tcp);
    f.extend_from_slice(payload);
    f
}

/// An Ethernet + IPv4 + UDP frame with `payload` (UDP checksum 0: none).
pub fn ipv4_udp_frame(dst: [u8; 6], src: [u8; 6], sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = eth_header(dst, src, ETH_P_IP);
    f.extend(ipv4_header(PEER_IP, GUEST_IP, 17, 8 + payload.len()));
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    let len = u16::try_from(8 + payload.len()).expect("fits");
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Describe the first difference between two byte strings (for assertion messages).
pub fn first_difference(got: &[u8], want: &[u8]) -> String {
    if got.len() != want.len() {
        return format!("length {} != expected {}", got.len(), want.len());
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!("byte {i}: {:#04x} != expected {:#04x}", got[i], want[i]),
        None => "identical".into(),
    }
}

/// Assert byte equality with a readable message.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        panic!("{what}: payload differs: {}", first_difference(got, want));
    }
}

/// `n` test frames from `src` to `dst`, seeds `seed..seed+n`, lengths spread over
/// `min_len..=max_len`.
fn frames(dst: [u8; 6], src: [u8; 6], seed: u32, n: usize, lens: (usize, usize)) -> Vec<Vec<u8>> {
    let (min_len, max_len) = lens;
    (0..n)
        .map(|i| {
            let len = if n > 1 {
                min_len + (max_len - min_len) * i / (n - 1)
            } else {
                min_len
            };
            let s = seed + u32::try_from(i).expect("fits");
            test_frame(dst, src, s, len)
        })
        .collect()
}

/// `n` raw test frames from the guest (broadcast), seeds `seed..seed+n`, lengths spread
/// over `min_len..=max_len`.
pub fn guest_frames(seed: u32, n: usize, min_len: usize, max_len: usize) -> Vec<Vec<u8>> {
    frames(BROADCAST, GUEST_MAC, seed, n, (min_len, max_len))
}

/// `n` raw test frames from the peer to the guest, as [`guest_frames`].
pub fn peer_frames(seed: u32, n: usize, min_len: usize, max_len: usize) -> Vec<Vec<u8>> {
    frames(GUEST_MAC, PEER_MAC, seed, n, (min_len, max_len))
}

/// Total length of `frames`.
pub fn total_len(frames: &[Vec<u8>]) -> u64 {
    frames
        .iter()
        .map(|f| u64::try_from(f.len()).expect("fits"))
        .sum()
}

// ---------------------------------------------------------------------------------------
// Offloads: IPv6, TCP with chosen flags and sequence numbers, checksum metadata.
// ---------------------------------------------------------------------------------------

/// IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// `flags`: the checksum is already verified (device to driver).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: TCP over IPv6.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type` flag: the super-packet carries CWR (ECN), to be kept on the first segment.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 header length (no options) of the test frames.
pub const IPV4_HLEN: usize = 20;
/// IPv6 header length (no extension headers) of the test frames.
pub const IPV6_HLEN: usize = 40;
/// TCP header length (no options) of the test frames.
pub const TCP_HLEN: usize = 20;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// Offset of the checksum inside a TCP header.
pub const TCP_CSUM_OFFSET: u16 = 16;
/// Offset of the checksum inside a UDP header.
pub const UDP_CSUM_OFFSET: u16 = 6;

/// TCP flag CWR (congestion window reduced: the ECN bit GSO carries).
pub const TCP_CWR: u8 = 0x80;
/// TCP flag ECE.
pub const TCP_ECE: u8 = 0x40;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP flag PSH.
pub const TCP_PSH: u8 = 0x08;

/// Source address of the test IPv6 packets (ULA `fd00:77::1`).
pub const PEER_IP6: [u8; 16] = [0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// Destination address of the test IPv6 packets (ULA `fd00:77::2`).
pub const GUEST_IP6: [u8; 16] = [0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The IP version of a test TCP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4 ([`PEER_IP`] -> [`GUEST_IP`]).
    V4,
    /// IPv6 ([`PEER_IP6`] -> [`GUEST_IP6`]).
    V6,
}

impl IpVersion {
    /// The EtherType.
    pub fn ethertype(self) -> u16 {
        match self {
            IpVersion::V4 => ETH_P_IP,
            IpVersion::V6 => ETH_P_IPV6,
        }
    }

    /// Length of the IP header the builders write.
    pub fn ip_hlen(self) -> usize {
        match self {
            IpVersion::V4 => IPV4_HLEN,
            IpVersion::V6 => IPV6_HLEN,
        }
    }

    /// Where the transport header starts in the frame: `csum_start` of an L4 checksum.
    pub fn l4_offset(self) -> u16 {
        u16::try_from(ETH_HLEN + self.ip_hlen()).expect("small")
    }

    /// Ethernet + IP + TCP header length: `hdr_len` of a TCP GSO packet.
    pub fn tcp_hdr_len(self) -> u16 {
        u16::try_from(ETH_HLEN + self.ip_hlen() + TCP_HLEN).expect("small")
    }

    /// The plain GSO type of a TCP packet of this version.
    pub fn gso_tcp(self) -> u8 {
        match self {
            IpVersion::V4 => VIRTIO_NET_HDR_GSO_TCPV4,
            IpVersion::V6 => VIRTIO_NET_HDR_GSO_TCPV6,
        }
    }
}

/// The IPv6 header of a packet with `payload_len` bytes after it.
pub fn ipv6_header(src: [u8; 16], dst: [u8; 16], next_header: u8, payload_len: usize) -> Vec<u8> {
    let plen = u16::try_from(payload_len).expect("IPv6 payload fits 64 KiB");
    // Version 6, traffic class 0, flow label 0x12345.
    let mut ip = vec![0x60, 0x01, 0x23, 0x45];
    ip.extend_from_slice(&plen.to_be_bytes());
    ip.extend_from_slice(&[next_header, 64]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip
}

/// The one's-complement sum (folded, not inverted) of the IPv4 pseudo-header.
pub fn pseudo_sum_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> u16 {
    let len = u16::try_from(l4_len).expect("IPv4 L4 length fits 16 bits");
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&len.to_be_bytes());
    csum_fold(0, &p)
}

/// The one's-complement sum (folded, not inverted) of the IPv6 pseudo-header.
pub fn pseudo_sum_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, l4_len: usize) -> u16 {
    let len = u32::try_from(l4_len).expect("IPv6 L4 length fits 32 bits");
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next_header]);
    csum_fold(0, &p)
}

/// An Ethernet + IP (`ip`) + TCP frame from port 40000 to 5201 with sequence number
/// `seq`, TCP flags `tcp_flags` and `payload`. The TCP checksum field holds the
/// pseudo-header sum, as it does in a CHECKSUM_PARTIAL (NEEDS_CSUM) packet: complete it
/// with [`complete_csum`] to get a packet whose checksum verifies.
pub fn tcp_frame(
    ip: IpVersion,
    dst: [u8; 6],
    src: [u8; 6],
    seq: u32,
    tcp_flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let l4_len = TCP_HLEN + payload.len();
    let mut f = eth_header(dst, src, ip.ethertype());
    let partial = match ip {
        IpVersion::V4 => {
            f.extend(ipv4_header(PEER_IP, GUEST_IP, 6, l4_len));
            pseudo_sum_v4(PEER_IP, GUEST_IP, 6, l4_len)
        }
        IpVersion::V6 => {
            f.extend(ipv6_header(PEER_IP6, GUEST_IP6, 6, l4_len));
            pseudo_sum_v6(PEER_IP6, GUEST_IP6, 6, l4_len)
        }
    };
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&5201u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    // Data offset 5 words; window 0xffff; checksum; urgent pointer 0.
    f.extend_from_slice(&[0x50, tcp_flags, 0xff, 0xff]);
    f.extend_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// An Ethernet + IPv4 + UDP frame whose UDP checksum field holds the pseudo-header sum
/// (a NEEDS_CSUM packet: `csum_start` 34, `csum_offset` 6).
pub fn ipv4_udp_frame_partial_csum(
    dst: [u8; 6],
    src: [u8; 6],
    sport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = ipv4_udp_frame(dst, src, sport, payload);
    let partial = pseudo_sum_v4(PEER_IP, GUEST_IP, 17, UDP_HLEN + payload.len());
    let at = ETH_HLEN + IPV4_HLEN + usize::from(UDP_CSUM_OFFSET);
    f[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    f
}

/// Do what a NIC does for NEEDS_CSUM: checksum `frame` from `csum_start` to the end
/// (the field at `csum_start + csum_offset` holds the pseudo-header sum) and store the
/// complement there.
pub fn complete_csum(frame: &mut [u8], csum_start: u16, csum_offset: u16) {
    let start = usize::from(csum_start);
    let at = start + usize::from(csum_offset);
    assert!(
        at + 2 <= frame.len(),
        "checksum at {start}+{csum_offset} outside a {}-byte frame",
        frame.len()
    );
    let c = !csum_fold(0, &frame[start..]);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The parts of an Ethernet + IPv4/IPv6 + TCP/UDP frame the offload tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4View {
    /// IP version.
    pub ip: IpVersion,
    /// IP protocol / next header.
    pub proto: u8,
    /// The transport header and payload, as long as the IP header says.
    pub l4: Vec<u8>,
    /// Pseudo-header sum for `l4`.
    pub pseudo: u16,
}

impl L4View {
    /// Parse `frame` (no VLAN, no IP options or extension headers); `None` when it is
    /// not such a frame or its lengths are inconsistent.
    pub fn parse(frame: &[u8]) -> Option<L4View> {
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let ip = match ethertype {
            ETH_P_IP => IpVersion::V4,
            ETH_P_IPV6 => IpVersion::V6,
            _ => return None,
        };
        let iph = frame.get(ETH_HLEN..ETH_HLEN + ip.ip_hlen())?;
        let (proto, l4_len, pseudo) = match ip {
            IpVersion::V4 => {
                if iph[0] != 0x45 {
                    return None;
                }
                let total = usize::from(u16::from_be_bytes([iph[2], iph[3]]));
                let l4_len = total.checked_sub(IPV4_HLEN)?;
                let src: [u8; 4] = iph[12..16].try_into().ok()?;
                let dst: [u8; 4] = iph[16..20].try_into().ok()?;
                (iph[9], l4_len, pseudo_sum_v4(src, dst, iph[9], l4_len))
            }
            IpVersion::V6 => {
                if iph[0] >> 4 != 6 {
                    return None;
                }
                let l4_len = usize::from(u16::from_be_bytes([iph[4], iph[5]]));
                let src: [u8; 16] = iph[8..24].try_into().ok()?;
                let dst: [u8; 16] = iph[24..40].try_into().ok()?;
                (iph[6], l4_len, pseudo_sum_v6(src, dst, iph[6], l4_len))
            }
        };
        let start = ETH_HLEN + ip.ip_hlen();
        let l4 = frame.get(start..start + l4_len)?.to_vec();
        if start + l4_len != frame.len() {
            return None;
        }
        Some(L4View {
            ip,
            proto,
            l4,
            pseudo,
        })
    }

    /// Whether the transport checksum verifies over the pseudo-header and `l4`.
    pub fn checksum_ok(&self) -> bool {
        csum_fold(u32::from(self.pseudo), &self.l4) == 0xffff
    }

    /// TCP sequence number (`None` unless TCP).
    pub fn tcp_seq(&self) -> Option<u32> {
        (self.proto == 6).then(|| u32::from_be_bytes(self.l4[4..8].try_into().expect("4")))
    }

    /// TCP flags (`None` unless TCP).
    pub fn tcp_flags(&self) -> Option<u8> {
        (self.proto == 6).then(|| self.l4[13])
    }

    /// The TCP payload (`None` unless TCP).
    pub fn tcp_payload(&self) -> Option<&[u8]> {
        if self.proto != 6 {
            return None;
        }
        let off = usize::from(self.l4.get(12)? >> 4) * 4;
        self.l4.get(off..)
    }
}
