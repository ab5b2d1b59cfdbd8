// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `NetmemRef`: a copyable handle to one unit of network memory.
//!
//! The analogue of Linux's `netmem_ref`: a 64-bit value whose low bit tags what it
//! refers to. Untagged, it names a page descriptor of guest memory (`NetmemDesc` in a
//! `GuestPageMap` region); tagged with [`NetmemRef::NET_IOV`], it names a `NetIov`,
//! one chunk of a device region (`NetIovArea`). Callers use the helpers below, never
//! the bits.
//!
//! Layout: `index << 17 | owner << 1 | tag`, where `owner` is the guest memory slot
//! (pages) or the area id (net_iovs), and `index` the page or chunk number in it.

use std::fmt;

/// Handle to one page of guest memory or one net_iov of a device region.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetmemRef(u64);

/// Which kind of memory a [`NetmemRef`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetmemKind {
    /// A page descriptor of guest memory.
    Page,
    /// A chunk of a device region.
    NetIov,
}

impl NetmemRef {
    /// Tag bit marking a net_iov (Linux: `NET_IOV`).
    const NET_IOV: u64 = 1;
    const OWNER_SHIFT: u32 = 1;
    const OWNER_BITS: u32 = 16;
    const INDEX_SHIFT: u32 = Self::OWNER_SHIFT + Self::OWNER_BITS;
    /// Largest page or chunk index a handle can carry.
    pub const MAX_INDEX: u64 = (1 << (64 - Self::INDEX_SHIFT)) - 1;

    /// Handle for page `index` of guest memory slot `slot`.
    ///
    /// # Panics
    /// If `index` exceeds [`Self::MAX_INDEX`] (2^47 pages: beyond any guest).
    pub fn page(slot: u16, index: u64) -> Self {
        assert!(index <= Self::MAX_INDEX, "page index {index} out of range");
        NetmemRef(index << Self::INDEX_SHIFT | u64::from(slot) << Self::OWNER_SHIFT)
    }

    /// Handle for chunk `index` of net_iov area `area`.
    ///
    /// # Panics
    /// If `index` exceeds [`Self::MAX_INDEX`].
    pub fn net_iov(area: u16, index: u64) -> Self {
        assert!(
            index <= Self::MAX_INDEX,
            "net_iov index {index} out of range"
        );
        NetmemRef(index << Self::INDEX_SHIFT | u64::from(area) << Self::OWNER_SHIFT | Self::NET_IOV)
    }

    /// Whether this handle names a net_iov (Linux: `netmem_is_net_iov`).
    pub fn is_net_iov(self) -> bool {
        self.0 & Self::NET_IOV != 0
    }

    /// The kind of memory this handle names.
    pub fn kind(self) -> NetmemKind {
        if self.is_net_iov() {
            NetmemKind::NetIov
        } else {
            NetmemKind::Page
        }
    }

    /// The guest memory slot (pages) or area id (net_iovs).
    pub fn owner(self) -> u16 {
        // The mask keeps exactly OWNER_BITS (16) bits, so the value fits in u16.
        u16::try_from(self.0 >> Self::OWNER_SHIFT & 0xffff).unwrap_or(u16::MAX)
    }

    /// The page number in its slot, or the chunk number in its area.
    pub fn index(self) -> u64 {
        self.0 >> Self::INDEX_SHIFT
    }

    /// The raw 64-bit value (for rings and maps that store handles).
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// Rebuild a handle from [`Self::to_raw`].
    pub fn from_raw(raw: u64) -> Self {
        NetmemRef(raw)
    }
}

impl fmt::Debug for NetmemRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            NetmemKind::Page => write!(f, "page({}:{})", self.owner(), self.index()),
            NetmemKind::NetIov => write!(f, "net_iov({}:{})", self.owner(), self.index()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn page_round_trips(slot: u16, index in 0..=NetmemRef::MAX_INDEX) {
            let r = NetmemRef::page(slot, index);
            prop_assert!(!r.is_net_iov());
            prop_assert_eq!(r.kind(), NetmemKind::Page);
            prop_assert_eq!(r.owner(), slot);
            prop_assert_eq!(r.index(), index);
            prop_assert_eq!(NetmemRef::from_raw(r.to_raw()), r);
        }

        #[test]
        fn net_iov_round_trips(area: u16, index in 0..=NetmemRef::MAX_INDEX) {
            let r = NetmemRef::net_iov(area, index);
            prop_assert!(r.is_net_iov());
            prop_assert_eq!(r.owner(), area);
            prop_assert_eq!(r.index(), index);
        }

        #[test]
        fn tags_never_collide(a: u16, i in 0..=NetmemRef::MAX_INDEX) {
            prop_assert_ne!(NetmemRef::page(a, i), NetmemRef::net_iov(a, i));
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn oversized_index_is_refused() {
        let _ = NetmemRef::page(0, NetmemRef::MAX_INDEX + 1);
    }
}
