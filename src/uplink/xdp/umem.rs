//! The UMEM of one AF_XDP queue: the memory area the kernel and we exchange frames in,
//! and the allocator of its free frames.
//!
//! DOC: frame ownership. A frame (a `frame_size` chunk at a UMEM offset, the "address"
//! the rings carry) is at any moment owned by exactly one side:
//!
//! - user space, free: in the [`FrameAlloc`];
//! - the kernel: on the fill ring, in the RX ring until we read it, on the TX ring, or
//!   on the completion ring until we read it;
//! - user space, busy: between reading it from the RX ring and handing it back, or
//!   between [`FrameAlloc::alloc`] and putting it on the TX ring.
//!
//! Only frames in the last state may be touched through [`UmemArea::frame_mut`].
//!
//! DOC: the page pool seam. [`FrameAlloc`] is deliberately the smallest allocator that
//! does the job: a LIFO stack of free frame addresses with an ownership bit per frame.
//! In the netmem design (DESIGN.md sections 1 and 4) the UMEM is a `NetIovArea`, each
//! frame is a net_iov (index = `addr / frame_size`), and a `PagePool` with a UMEM
//! `MemoryProvider` hands them out. When `src/netmem/page_pool.rs` lands, `FrameAlloc`
//! is replaced by that pool with no other change to the queue: `alloc` becomes the
//! pool's owner-only allocation (`PagePool::alloc_*_direct`, the queue's worker is the
//! NAPI context), `free` its direct recycle, and the fill-ring refill its refill path.
//! Nothing outside this file and the two call sites in `mod.rs` knows how free frames
//! are kept.

use std::io;
use std::ptr::NonNull;

/// An anonymous, page-aligned mapping registered as UMEM.
///
/// It is unmapped on drop; the kernel pins the pages while a socket has them
/// registered, so the area must be dropped after the rings and sockets that use it
/// (the owning queue declares it last).
pub(crate) struct UmemArea {
    base: NonNull<u8>,
    len: usize,
    frame_size: u32,
    frames: u32,
}

// SAFETY: the area is plain memory owned by this value (no thread-local state); the
// raw pointer is what makes the type !Send by default. Access to frame bytes goes
// through `&mut self` (`frame_mut`), so moving the owner to another thread cannot
// create unsynchronised aliasing on our side.
unsafe impl Send for UmemArea {}

impl UmemArea {
    /// Map `frames` frames of `frame_size` bytes.
    pub(crate) fn new(frames: u32, frame_size: u32) -> io::Result<Self> {
        let len = u64::from(frames)
            .checked_mul(u64::from(frame_size))
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh private anonymous mapping: no address hint, no fd; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave 0"))?;
        Ok(UmemArea {
            base,
            len,
            frame_size,
            frames,
        })
    }

    /// The whole area, for registration (`XDP_UMEM_REG`).
    pub(crate) fn as_raw(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.len)
    }

    /// Size of one frame.
    pub(crate) fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Number of frames.
    pub(crate) fn frames(&self) -> u32 {
        self.frames
    }

    /// The bytes `addr..addr + len`, if they lie inside one frame.
    ///
    /// # Safety
    /// The frame containing `addr` must be owned by user space and busy (see the
    /// module documentation): not on any ring, so the kernel does not write to it
    /// while the returned slice lives.
    pub(crate) unsafe fn frame_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let frame_size = u64::from(self.frame_size);
        let end = addr.checked_add(u64::try_from(len).ok()?)?;
        let frame_end = (addr / frame_size)
            .checked_add(1)?
            .checked_mul(frame_size)?;
        if end > frame_end || end > u64::try_from(self.len).ok()? {
            return None;
        }
        let start = usize::try_from(addr).ok()?;
        // SAFETY: `start + len <= self.len` (checked above), so the range lies inside
        // the live mapping owned by `self`; `&mut self` excludes other references from
        // our side, and the caller guarantees the kernel does not own the frame.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len) })
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping created in `new`, unmapped once.
        // No slice into it outlives `self` (they borrow `self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Free frames of one UMEM (the stand-in for a `PagePool`; see the module docs).
#[derive(Debug)]
pub struct FrameAlloc {
    /// Free frame addresses; LIFO so the most recently used (cache-warm) frame goes out
    /// first, like the page pool's alloc cache.
    free: Vec<u64>,
    /// One bit per frame: set while the frame is allocated.
    in_use: Vec<u64>,
    frame_size: u32,
    frames: u32,
}

impl FrameAlloc {
    /// All `frames` frames of `frame_size` bytes, free.
    pub fn new(frames: u32, frame_size: u32) -> Self {
        assert!(
            frame_size.is_power_of_two(),
            "aligned UMEM chunks are a power of two"
        );
        let free = (0..frames)
            .rev()
            .map(|i| u64::from(i) * u64::from(frame_size))
            .collect();
        let words = usize::try_from(frames.div_ceil(64)).unwrap_or(0);
        FrameAlloc {
            free,
            in_use: vec![0; words],
            frame_size,
            frames,
        }
    }

    /// Take a free frame; returns its UMEM address (the frame's first byte).
    pub fn alloc(&mut self) -> Option<u64> {
        let addr = self.free.pop()?;
        let (w, b) = self.bit(addr)?;
        self.in_use[w] |= b;
        Some(addr)
    }

    /// Give back the frame containing `addr` (any address inside it: the RX ring hands
    /// back addresses past the headroom). Returns false, changing nothing, for an
    /// address outside the UMEM or a frame that is not allocated (a double free).
    pub fn free(&mut self, addr: u64) -> bool {
        let base = addr & !(u64::from(self.frame_size) - 1);
        let Some((w, b)) = self.bit(base) else {
            return false;
        };
        if self.in_use[w] & b == 0 {
            return false;
        }
        self.in_use[w] &= !b;
        self.free.push(base);
        true
    }

    /// Frames currently free.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.free.len()
    }

    fn bit(&self, base: u64) -> Option<(usize, u64)> {
        let idx = base / u64::from(self.frame_size);
        if idx >= u64::from(self.frames) {
            return None;
        }
        let w = usize::try_from(idx / 64).ok()?;
        Some((w, 1u64 << (idx % 64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn alloc_hands_out_every_frame_once() {
        let mut a = FrameAlloc::new(100, 4096);
        let mut got: Vec<u64> = std::iter::from_fn(|| a.alloc()).collect();
        assert_eq!(got.len(), 100);
        assert_eq!(a.available(), 0);
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|x| x % 4096 == 0 && *x < 100 * 4096));
    }

    #[test]
    fn free_normalises_and_refuses_double_and_foreign_frees() {
        let mut a = FrameAlloc::new(4, 2048);
        let f = a.alloc().unwrap();
        assert!(a.free(f + 256 + 14));
        assert!(!a.free(f), "double free accepted");
        assert!(!a.free(4 * 2048), "address past the UMEM accepted");
        assert_eq!(a.available(), 4);
        assert_eq!(
            a.alloc(),
            Some(f),
            "LIFO: the last freed frame goes out first"
        );
    }

    proptest! {
        #[test]
        fn accounting_holds(ops in proptest::collection::vec(any::<(bool, u8)>(), 0..300)) {
            let mut a = FrameAlloc::new(70, 4096);
            let mut held: Vec<u64> = Vec::new();
            for (alloc, pick) in ops {
                if alloc {
                    if let Some(f) = a.alloc() {
                        prop_assert!(!held.contains(&f));
                        held.push(f);
                    } else {
                        prop_assert_eq!(held.len(), 70);
                    }
                } else if !held.is_empty() {
                    let f = held.swap_remove(usize::from(pick) % held.len());
                    prop_assert!(a.free(f));
                }
                prop_assert_eq!(a.available() + held.len(), 70);
            }
        }
    }

    #[test]
    fn area_bounds_are_checked() {
        let mut area = UmemArea::new(2, 4096).unwrap();
        // SAFETY: no socket has this area registered; user space owns every frame.
        unsafe {
            assert!(area.frame_mut(0, 4096).is_some());
            assert!(area.frame_mut(4096 + 100, 3996).is_some());
            assert!(area.frame_mut(100, 4096).is_none(), "crosses a frame");
            assert!(area.frame_mut(8192, 1).is_none(), "past the end");
            assert!(area.frame_mut(u64::MAX, 2).is_none(), "wraps");
        }
    }
}
