// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The UMEM of one AF_XDP queue: a [`NetIovArea`] whose chunks are the frames, handed
//! out by the queue's own [`PagePool`].
//!
//! Frame `i` is net_iov `i` of the area (UMEM address `i * frame_size`, Linux:
//! `idx = niov - area->niovs`) and travels as `NetmemRef::net_iov(area, i)`. The
//! pool's provider is an [`AreaProvider`] over the area; the queue's worker owns the
//! pool, so every allocation and return is the owner-only `_direct` path (the worker is
//! the NAPI context).
//!
//! DOC: frame ownership. A frame is at any moment owned by exactly one side:
//!
//! - the page pool: in its alloc cache, its recycle ring, or back with its provider;
//! - the kernel: on the fill ring, in the RX ring until we read it, on the TX ring, or
//!   on the completion ring until we read it (its bit is set in [`Umem`]'s kernel map);
//! - the queue, busy: between [`Umem::alloc_direct`] and [`Umem::give_to_kernel`], or
//!   between [`Umem::take_from_kernel`] and [`Umem::recycle_direct`].
//!
//! Only busy frames may be read or written ([`Umem::frame_mut`], [`Umem::push_frag`]).
//! The kernel map turns a ring entry naming a frame the kernel does not own (a kernel
//! or driver bug) into a refused take instead of a netmem recycled twice, and lets the
//! queue reclaim every frame from the kernel when the socket is gone, so that the pool
//! can be destroyed with nothing in flight.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::netmem::{
    AreaProvider, FragList, NetIovArea, NetIovError, NetmemRef, PagePool, PagePoolError,
    PagePoolParams, PagePoolStatsReader,
};

/// The frames of one AF_XDP queue and the pool that hands them out.
///
/// Must be dropped after the socket that has it registered (the owning queue declares
/// it after its rings): dropping it returns the frames the kernel held to the pool and
/// destroys the pool, which unmaps the memory once nothing is in flight.
pub(crate) struct Umem {
    pool: PagePool,
    area: Arc<NetIovArea>,
    /// One bit per frame: set while the kernel owns it.
    with_kernel: Vec<u64>,
    frame_size: u32,
}

impl Umem {
    /// `frames` frames of `frame_size` bytes (a power of two: aligned chunk mode) of
    /// fresh anonymous memory, all in a new page pool.
    pub(crate) fn new(frames: u32, frame_size: u32) -> Result<Self, PagePoolError> {
        // A product of two u32s fits in u64; it may not fit in a 32-bit usize.
        let len = usize::try_from(u64::from(frames) * u64::from(frame_size)).map_err(|_| {
            NetIovError::TooManyChunks {
                len: usize::MAX,
                chunk_size: frame_size,
            }
        })?;
        if !frame_size.is_power_of_two() {
            return Err(NetIovError::ChunkSize {
                chunk_size: frame_size,
                len,
            }
            .into());
        }
        let area = Arc::new(NetIovArea::anonymous(len, frame_size)?);
        let pool = PagePool::new(
            PagePoolParams::default(),
            Box::new(AreaProvider::new(Arc::clone(&area))),
        )?;
        let words = usize::try_from(area.nr_chunks().div_ceil(64)).unwrap_or(0);
        Ok(Umem {
            pool,
            area,
            with_kernel: vec![0; words],
            frame_size,
        })
    }

    /// The whole area, for registration (`XDP_UMEM_REG`): page-aligned (an mmap) and
    /// exactly `frames() * frame_size()` bytes.
    pub(crate) fn as_raw(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.area.as_ptr(), self.area.len())
    }

    /// Size of one frame.
    pub(crate) fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Number of frames.
    #[cfg(test)]
    pub(crate) fn frames(&self) -> u32 {
        self.area.nr_chunks()
    }

    /// A reader of the pool's counters for the stats file.
    pub(crate) fn stats_reader(&self) -> PagePoolStatsReader {
        self.pool.stats_reader()
    }

    /// Frames the pool answers for (all of them while the queue lives: free in the
    /// pool, with the kernel, or busy).
    #[cfg(test)]
    pub(crate) fn inflight(&self) -> u64 {
        self.pool.inflight()
    }

    /// Take a frame from the pool; it is busy until given to the kernel or recycled.
    #[inline]
    pub(crate) fn alloc_direct(&mut self) -> Option<NetmemRef> {
        self.pool.alloc_netmem_direct()
    }

    /// Give a busy frame back to the pool.
    #[inline]
    pub(crate) fn recycle_direct(&mut self, frame: NetmemRef) {
        self.pool.put_netmem_direct(frame);
    }

    fn bit(&self, idx: u64) -> Option<(usize, u64)> {
        if idx >= u64::from(self.area.nr_chunks()) {
            return None;
        }
        Some((usize::try_from(idx / 64).ok()?, 1u64 << (idx % 64)))
    }

    /// Mark a busy frame as the kernel's and return its UMEM address, for the fill
    /// or TX ring; None (nothing changed) for a handle that is not a frame of this
    /// UMEM or a frame the kernel already owns.
    #[inline]
    pub(crate) fn give_to_kernel(&mut self, frame: NetmemRef) -> Option<u64> {
        let addr = self.area.net_iov(frame)?.area_offset();
        let (w, b) = self.bit(frame.index())?;
        if self.with_kernel[w] & b != 0 {
            return None;
        }
        self.with_kernel[w] |= b;
        Some(addr)
    }

    /// Take back the frame holding UMEM address `addr` (read off the RX or the
    /// completion ring; RX addresses point past the headroom): returns the frame, now
    /// busy, and the offset of `addr` in it. None, changing nothing, for an address
    /// outside the UMEM or in a frame the kernel does not own.
    #[inline]
    pub(crate) fn take_from_kernel(&mut self, addr: u64) -> Option<(NetmemRef, u32)> {
        let (frame, offset) = self.area.netmem_at_offset(addr)?;
        let (w, b) = self.bit(frame.index())?;
        if self.with_kernel[w] & b == 0 {
            return None;
        }
        self.with_kernel[w] &= !b;
        Some((frame, offset))
    }

    /// Append `len` bytes at `offset` of a busy frame to `list` as a net_iov frag.
    pub(crate) fn push_frag<'m>(
        &'m self,
        frame: NetmemRef,
        offset: u32,
        len: u32,
        list: &mut FragList<'m>,
    ) -> Result<(), NetIovError> {
        self.area.push_frag(frame, offset, len, list)
    }

    /// The first `len` bytes of a frame, if they fit in it.
    ///
    /// # Safety
    /// The frame must be busy (see the module documentation): taken from the pool or
    /// from the kernel and not yet handed on, so that neither the kernel nor another
    /// user writes to it, and no frag over it may be in use while the slice lives.
    pub(crate) unsafe fn frame_mut(&mut self, frame: NetmemRef, len: usize) -> Option<&mut [u8]> {
        let niov = self.area.net_iov(frame)?;
        if u32::try_from(len).ok()? > niov.len() {
            return None;
        }
        // SAFETY: `len` is at most the chunk size, so the range is inside this chunk of
        // the area, which stays mapped while `self` (holding an `Arc` to it) lives;
        // `&mut self` excludes other slices from our side for the returned lifetime,
        // and the caller guarantees the frame is busy, so the kernel does not touch it.
        Some(unsafe { std::slice::from_raw_parts_mut(niov.addr().as_ptr(), len) })
    }

    /// Return every frame the kernel still owns to the pool; only once the socket is
    /// closed (the kernel no longer reads or writes them).
    fn reclaim_from_kernel(&mut self) -> usize {
        let mut n = 0;
        for w in 0..self.with_kernel.len() {
            let mut word = std::mem::take(&mut self.with_kernel[w]);
            while word != 0 {
                let bit = word.trailing_zeros();
                word &= word - 1;
                let idx = u64::try_from(w).unwrap_or(u64::MAX) * 64 + u64::from(bit);
                if let Some(niov) = self.area.net_iov_at(u32::try_from(idx).unwrap_or(u32::MAX)) {
                    self.pool.put_netmem_direct(niov.netmem());
                    n += 1;
                }
            }
        }
        n
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // The socket was dropped first (the queue declares its rings before the UMEM),
        // so every frame is ours again. With them back, the pool (dropped right after
        // this) has nothing in flight and releases the memory; should a frame be
        // missing, it parks itself and says so.
        let reclaimed = self.reclaim_from_kernel();
        log::debug!(
            "umem of page pool {}: {reclaimed} frames back from the kernel",
            self.pool.id()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmem::parked_pools;

    #[test]
    fn frames_are_net_iovs_at_their_umem_address() {
        let mut u = Umem::new(8, 4096).unwrap();
        assert_eq!((u.frames(), u.frame_size()), (8, 4096));
        assert_eq!(u.as_raw().len(), 8 * 4096);
        let mut seen = Vec::new();
        while let Some(f) = u.alloc_direct() {
            assert!(f.is_net_iov());
            let addr = u.give_to_kernel(f).unwrap();
            assert_eq!(addr, f.index() * 4096);
            seen.push(addr);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..8).map(|i| i * 4096).collect::<Vec<_>>());
        assert_eq!(u.stats_reader().read().alloc_slow, 1);
    }

    #[test]
    fn kernel_ownership_is_checked_both_ways() {
        let mut u = Umem::new(4, 2048).unwrap();
        let f = u.alloc_direct().unwrap();
        let addr = u.give_to_kernel(f).unwrap();
        assert_eq!(u.give_to_kernel(f), None, "given to the kernel twice");
        // An RX address points past the headroom: it still names the frame.
        assert_eq!(u.take_from_kernel(addr + 256 + 14), Some((f, 270)));
        assert_eq!(u.take_from_kernel(addr), None, "taken back twice");
        assert_eq!(u.take_from_kernel(4 * 2048), None, "address past the UMEM");
        assert_eq!(u.take_from_kernel(u64::MAX), None);
        u.recycle_direct(f);
        assert_eq!(
            u.alloc_direct(),
            Some(f),
            "LIFO: the last recycled goes out first"
        );
        u.recycle_direct(f);
    }

    #[test]
    fn busy_frames_are_bounds_checked() {
        let mut u = Umem::new(2, 4096).unwrap();
        let f = u.alloc_direct().unwrap();
        // SAFETY: `f` was just allocated and is on no ring: busy.
        unsafe {
            assert_eq!(u.frame_mut(f, 4096).map(|s| s.len()), Some(4096));
            assert!(u.frame_mut(f, 4097).is_none(), "past the frame");
            let other = NetmemRef::net_iov(u.area.id().wrapping_add(1), 0);
            assert!(u.frame_mut(other, 1).is_none(), "another area's net_iov");
        }
        let mut list = FragList::new();
        u.push_frag(f, 100, 3996, &mut list).unwrap();
        assert!(u.push_frag(f, 100, 3997, &mut list).is_err());
        assert_eq!(list.len(), 3996);
        drop(list);
        u.recycle_direct(f);
    }

    /// Frames still with the kernel when the queue goes come back to the pool, so the
    /// pool is released, not parked with its memory.
    #[test]
    fn drop_reclaims_kernel_frames_and_releases_the_pool() {
        let mut u = Umem::new(64, 4096).unwrap();
        for _ in 0..40 {
            let f = u.alloc_direct().unwrap();
            u.give_to_kernel(f).unwrap();
        }
        assert_eq!(u.inflight(), 64);
        let id = u.pool.id();
        assert_eq!(u.reclaim_from_kernel(), 40);
        assert_eq!(u.reclaim_from_kernel(), 0);
        for _ in 0..10 {
            let f = u.alloc_direct().unwrap();
            u.give_to_kernel(f).unwrap();
        }
        drop(u);
        assert!(
            parked_pools().iter().all(|p| p.id() != id),
            "pool {id} parked: frames were lost"
        );
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(
            Umem::new(4, 3000).is_err(),
            "aligned mode needs a power of two"
        );
        assert!(Umem::new(0, 4096).is_err());
    }
}
