// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `virtio_net_hdr_v1`: the 12-byte header in front of every packet on the rings.

use vm_memory::ByteValued;

use super::features::{self, Features};

/// Size of the header with VERSION_1 / MRG_RXBUF (the only layout we negotiate).
pub const VNET_HDR_LEN: usize = 12;

/// `flags`: the checksum starting at `csum_start` still has to be computed.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum is already verified (device to driver only).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: no segmentation.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (legacy UFO).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type` flag: ECN (CWR) bit set on the super-packet.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The virtio-net header, little-endian on the wire (we only run on little-endian hosts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to replicate in each segment.
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Number of merged RX buffers (MRG_RXBUF / VERSION_1).
    pub num_buffers: u16,
}

// SAFETY: repr(C) struct of integers with no padding (1+1+2*5 = 12 bytes, checked below);
// any bit pattern is a valid value.
unsafe impl ByteValued for VirtioNetHdr {}

const _: () = assert!(std::mem::size_of::<VirtioNetHdr>() == VNET_HDR_LEN);

/// Why a transmit header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Unknown or not negotiated `gso_type`.
    #[error("gso_type {0:#x} is unknown or not negotiated")]
    GsoType(u8),
    /// Unknown flag bits, or NEEDS_CSUM without CSUM negotiated.
    #[error("header flags {0:#x} are unknown or not negotiated")]
    Flags(u8),
    /// `hdr_len` does not fit the packet.
    #[error("hdr_len {hdr_len} does not fit a {len}-byte packet")]
    HdrLen {
        /// Claimed header length.
        hdr_len: u16,
        /// Packet length (without the virtio header).
        len: usize,
    },
    /// GSO with a zero segment size.
    #[error("gso packet with gso_size 0")]
    GsoSize,
    /// The checksum position lies outside the packet.
    #[error("checksum at {start}+{offset} outside a {len}-byte packet")]
    Csum {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Packet length.
        len: usize,
    },
}

impl VirtioNetHdr {
    /// Build from the 12 wire bytes.
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    /// The 12 wire bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
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

    /// Check a guest's transmit header against the negotiated `features` for a packet of
    /// `len` bytes (without this header).
    pub fn validate_tx(&self, features: Features, len: usize) -> Result<(), HeaderError> {
        if self.flags & !(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) != 0 {
            return Err(HeaderError::Flags(self.flags));
        }
        if self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            if !features.has(features::VIRTIO_NET_F_CSUM) {
                return Err(HeaderError::Flags(self.flags));
            }
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > len {
                return Err(HeaderError::Csum {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    len,
                });
            }
        }
        let ecn = self.gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
        let needed = match self.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE if !ecn => None,
            VIRTIO_NET_HDR_GSO_TCPV4 => Some(features::VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => Some(features::VIRTIO_NET_F_HOST_TSO6),
            _ => return Err(HeaderError::GsoType(self.gso_type)),
        };
        if let Some(bit) = needed {
            if !features.has(bit) || (ecn && !features.has(features::VIRTIO_NET_F_HOST_ECN)) {
                return Err(HeaderError::GsoType(self.gso_type));
            }
            if self.gso_size == 0 {
                return Err(HeaderError::GsoSize);
            }
            if self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 {
                return Err(HeaderError::Flags(self.flags));
            }
        }
        if usize::from(self.hdr_len) > len {
            return Err(HeaderError::HdrLen {
                hdr_len: self.hdr_len,
                len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Features {
        Features::from_bits(features::SUPPORTED)
    }

    #[test]
    fn plain_header_is_valid() {
        assert_eq!(VirtioNetHdr::default().validate_tx(all(), 60), Ok(()));
    }

    #[test]
    fn unknown_gso_type_is_refused() {
        let h = VirtioNetHdr {
            gso_type: 9,
            ..Default::default()
        };
        assert_eq!(h.validate_tx(all(), 100), Err(HeaderError::GsoType(9)));
    }

    #[test]
    fn tso_needs_negotiation() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1448,
            hdr_len: 54,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(h.validate_tx(all(), 3000), Ok(()));
        let f = Features::from_bits(features::SUPPORTED & !(1 << features::VIRTIO_NET_F_HOST_TSO4));
        assert_eq!(h.validate_tx(f, 3000), Err(HeaderError::GsoType(1)));
    }

    #[test]
    fn bogus_hdr_len_is_refused() {
        let h = VirtioNetHdr {
            hdr_len: 2000,
            ..Default::default()
        };
        assert!(matches!(
            h.validate_tx(all(), 100),
            Err(HeaderError::HdrLen { .. })
        ));
    }

    proptest! {
        #[test]
        fn bytes_round_trip(b: [u8; 12]) {
            prop_assert_eq!(VirtioNetHdr::from_bytes(&b).to_bytes(), b);
            let h = VirtioNetHdr::from_bytes(&b);
            prop_assert_eq!(h.as_slice(), &b[..]);
        }

        #[test]
        fn accepted_headers_fit_the_packet(b: [u8; 12], len in 0usize..70000) {
            let h = VirtioNetHdr::from_bytes(&b);
            if h.validate_tx(all(), len).is_ok() {
                prop_assert!(usize::from(h.hdr_len) <= len);
                if h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                    prop_assert!(usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 <= len);
                }
            }
        }
    }
}
