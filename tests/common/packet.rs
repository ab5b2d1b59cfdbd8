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

/// `n` raw test frames from the guest (broadcast), seeds `seed..seed+n`, lengths spread
/// over `min_len..=max_len`.
pub fn guest_frames(seed: u32, n: usize, min_len: usize, max_len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = if n > 1 {
                min_len + (max_len - min_len) * i / (n - 1)
            } else {
                min_len
            };
            let s = seed + u32::try_from(i).expect("fits");
            test_frame(BROADCAST, GUEST_MAC, s, len)
        })
        .collect()
}

/// Total length of `frames`.
pub fn total_len(frames: &[Vec<u8>]) -> u64 {
    frames
        .iter()
        .map(|f| u64::try_from(f.len()).expect("fits"))
        .sum()
}
