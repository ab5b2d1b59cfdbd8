// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! virtio-net device configuration space (`struct virtio_net_config`).

use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;

/// The fields we expose, in the wire layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfigSpace {
    /// MAC address.
    pub mac: [u8; 6],
    /// `VIRTIO_NET_S_*` (link up).
    pub status: u16,
    /// Queue pairs offered.
    pub max_virtqueue_pairs: u16,
    /// MTU.
    pub mtu: u16,
}

/// Size of the layout up to and including `mtu`.
pub const CONFIG_SPACE_LEN: usize = 12;

impl NetConfigSpace {
    /// Config space for a link that is up.
    pub fn new(mac: [u8; 6], max_virtqueue_pairs: u16, mtu: u16) -> Self {
        NetConfigSpace {
            mac,
            // Link-up bit (1) fits in u16.
            status: u16::try_from(VIRTIO_NET_S_LINK_UP).unwrap_or(1),
            max_virtqueue_pairs,
            mtu,
        }
    }

    /// The wire bytes.
    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut b = [0u8; CONFIG_SPACE_LEN];
        b[0..6].copy_from_slice(&self.mac);
        b[6..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..10].copy_from_slice(&self.max_virtqueue_pairs.to_le_bytes());
        b[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }

    /// `size` bytes at `offset`, or None when the window is outside the space.
    pub fn read(&self, offset: u32, size: u32) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        self.to_bytes().get(start..end).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_virtio_spec() {
        let c = NetConfigSpace::new([2, 0, 0, 0, 0, 1], 2, 9000);
        let b = c.to_bytes();
        assert_eq!(&b[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 2);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 9000);
    }

    #[test]
    fn windows_outside_are_refused() {
        let c = NetConfigSpace::new([0; 6], 1, 1500);
        assert_eq!(c.read(10, 2), Some(1500u16.to_le_bytes().to_vec()));
        assert_eq!(c.read(11, 2), None);
        assert_eq!(c.read(u32::MAX, 2), None);
    }
}
