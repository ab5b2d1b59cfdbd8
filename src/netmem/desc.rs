// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `NetmemDesc`: the page-like descriptor of one page of guest memory.
//!
//! The analogue of `struct netmem_desc` (pp, pp_ref_count, flags). Eight bytes, so a
//! fully committed descriptor array costs 8 / 4096 = 0.195 % of the memory it
//! describes; the array is also lazily committed (see `GuestPageMap`), so only pages
//! that were ever referenced cost anything. The guest-physical address is not stored:
//! it follows from the descriptor's index in its region.

use std::sync::atomic::{AtomicU32, Ordering};

/// Descriptor of one page of guest memory.
#[derive(Debug, Default)]
#[repr(C)]
pub struct NetmemDesc {
    /// References held on this page by frags that outlive the call that built them
    /// (zero-copy transmit until completion); Linux: `pp_ref_count`.
    pp_ref_count: AtomicU32,
    /// Owning pool id in the low 24 bits (0: none), flags in the high 8 bits.
    pp_info: AtomicU32,
}

// Flag bit 24 is free: pages the backend writes during a migration are logged in the
// frontend's bitmap (`DirtyLog`), not here, so dirt is tracked one way only.
/// Flag: something outside the page pool (a device ring, a zero-copy transmit awaiting
/// completion) still uses the memory. A page pool that gets such a netmem back cannot
/// recycle it and releases it to its memory provider instead (Linux: a page whose
/// `page_ref_count` is not 1, counted as `recycle_released_ref`); the provider hands it
/// out again only once the flag is cleared.
pub const NETMEM_DESC_EXTERNAL_REF: u32 = 1 << 25;
const POOL_MASK: u32 = (1 << 24) - 1;

impl NetmemDesc {
    /// Take one reference; returns true when this was the first (0 -> 1).
    pub fn get_ref(&self) -> bool {
        self.pp_ref_count.fetch_add(1, Ordering::AcqRel) == 0
    }

    /// Drop one reference; returns true when it was the last (1 -> 0).
    ///
    /// # Panics
    /// On an underflow, which would mean a reference was dropped twice.
    pub fn put_ref(&self) -> bool {
        let old = self.pp_ref_count.fetch_sub(1, Ordering::AcqRel);
        assert!(old != 0, "pp_ref_count underflow");
        old == 1
    }

    /// Drop `nr` references at once; returns how many remain.
    ///
    /// # Panics
    /// If fewer than `nr` references are held.
    pub fn put_refs(&self, nr: u32) -> u32 {
        let old = self.pp_ref_count.fetch_sub(nr, Ordering::AcqRel);
        assert!(old >= nr, "pp_ref_count underflow");
        old - nr
    }

    /// Overwrite the reference count (Linux: `page_pool_fragment_netmem`, and the
    /// reset to one piece when the last reference of a pooled netmem is dropped).
    pub fn set_ref_count(&self, count: u32) {
        self.pp_ref_count.store(count, Ordering::Release);
    }

    /// Current reference count.
    pub fn ref_count(&self) -> u32 {
        self.pp_ref_count.load(Ordering::Acquire)
    }

    /// Owning pool id (0: not owned by a pool).
    pub fn pool_id(&self) -> u32 {
        self.pp_info.load(Ordering::Acquire) & POOL_MASK
    }

    /// Record the owning pool (ids are 24-bit; larger ids are truncated to their low bits).
    pub fn set_pool_id(&self, id: u32) {
        let id = id & POOL_MASK;
        let _ = self
            .pp_info
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v & !POOL_MASK | id)
            });
    }

    /// Set flag bits (e.g. [`NETMEM_DESC_EXTERNAL_REF`]).
    pub fn set_flags(&self, flags: u32) {
        self.pp_info.fetch_or(flags & !POOL_MASK, Ordering::AcqRel);
    }

    /// Clear flag bits.
    pub fn clear_flags(&self, flags: u32) {
        self.pp_info
            .fetch_and(!(flags & !POOL_MASK), Ordering::AcqRel);
    }

    /// Current flag bits.
    pub fn flags(&self) -> u32 {
        self.pp_info.load(Ordering::Acquire) & !POOL_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<NetmemDesc>(), 8);
    }

    #[test]
    fn refcount_reports_first_and_last() {
        let d = NetmemDesc::default();
        assert!(d.get_ref());
        assert!(!d.get_ref());
        assert_eq!(d.ref_count(), 2);
        assert!(!d.put_ref());
        assert!(d.put_ref());
    }

    #[test]
    #[should_panic(expected = "underflow")]
    fn double_put_panics() {
        NetmemDesc::default().put_ref();
    }

    #[test]
    fn pool_id_and_flags_are_independent() {
        const NETMEM_DESC_TEST_FLAG: u32 = 1 << 24;
        let d = NetmemDesc::default();
        d.set_pool_id(7);
        d.set_flags(NETMEM_DESC_TEST_FLAG);
        assert_eq!(d.pool_id(), 7);
        assert_eq!(d.flags(), NETMEM_DESC_TEST_FLAG);
        d.set_pool_id(9);
        assert_eq!(d.pool_id(), 9);
        assert_eq!(d.flags(), NETMEM_DESC_TEST_FLAG);
        d.set_flags(NETMEM_DESC_EXTERNAL_REF);
        d.clear_flags(NETMEM_DESC_TEST_FLAG);
        assert_eq!(d.flags(), NETMEM_DESC_EXTERNAL_REF);
        assert_eq!(d.pool_id(), 9);
    }

    #[test]
    fn bulk_put_and_set() {
        let d = NetmemDesc::default();
        d.set_ref_count(10);
        assert_eq!(d.put_refs(7), 3);
        assert_eq!(d.put_refs(3), 0);
    }

    #[test]
    #[should_panic(expected = "underflow")]
    fn bulk_put_underflow_panics() {
        let d = NetmemDesc::default();
        d.set_ref_count(2);
        d.put_refs(3);
    }
}
