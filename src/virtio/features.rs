// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! virtio-net feature bits: what we offer and helpers to test negotiated sets.

pub use virtio_bindings::virtio_config::{
    VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
};
pub use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
};
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// vhost-user: the backend speaks the protocol-features extension.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// vhost: log every write into guest memory (live migration's dirty logging).
pub const VHOST_F_LOG_ALL: u32 = 26;

/// The mask of feature number `b` (`b` < 64), for building feature sets in constants.
pub const fn bit(b: u32) -> u64 {
    1 << b
}

/// Every virtio feature we offer (all of them really work; see the tests).
pub const SUPPORTED: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MQ)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_F_RING_PACKED)
    | bit(VIRTIO_NET_F_GUEST_ANNOUNCE)
    | bit(VHOST_F_LOG_ALL)
    | bit(VHOST_USER_F_PROTOCOL_FEATURES);

/// A negotiated (or offered) virtio feature set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features(u64);

impl Features {
    /// Wrap raw feature bits.
    pub const fn from_bits(bits: u64) -> Self {
        Features(bits)
    }

    /// Raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether feature number `b` is set.
    pub const fn has(self, b: u32) -> bool {
        b < 64 && self.0 & (1 << b) != 0
    }

    /// Whether the guest accepts large (GSO) packets on receive.
    pub const fn guest_gso(self) -> bool {
        self.has(VIRTIO_NET_F_GUEST_TSO4)
            || self.has(VIRTIO_NET_F_GUEST_TSO6)
            || self.has(VIRTIO_NET_F_GUEST_UFO)
    }

    /// Largest frame (virtio header included) the guest may receive given `mtu`.
    pub fn max_rx_frame(self, mtu: u16) -> usize {
        if self.guest_gso() {
            // 64 KiB of GSO payload plus Ethernet/VLAN and the virtio header.
            65535 + 14 + 4 + super::VNET_HDR_LEN
        } else {
            usize::from(mtu) + 14 + 4 + super::VNET_HDR_LEN
        }
    }
}
