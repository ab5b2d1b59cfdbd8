// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `Frag` and `FragList`: a packet as an ordered list of contiguous pieces.
//!
//! `Frag` is `skb_frag_t` {netmem, offset, len}; `FragList` is the frag array of
//! `skb_shared_info` (inline capacity 17 = `MAX_SKB_FRAGS`, spilling to the heap
//! beyond). Next to each frag the list keeps the resolved host `iovec`, so an uplink
//! hands the list to `writev`/`readv` without another lookup.
//!
//! The lifetime `'m` is the borrow of the memory the frags point into (a
//! `GuestPageMap` snapshot or a `NetIovArea`): the mapping cannot go away while a
//! `FragList` that points into it exists.

use std::marker::PhantomData;

use smallvec::SmallVec;

use super::NetmemRef;

/// Inline capacity of a [`FragList`] (Linux: `MAX_SKB_FRAGS`).
pub const MAX_INLINE_FRAGS: usize = 17;

/// One contiguous piece of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag {
    /// The page or net_iov where the piece starts.
    pub netmem: NetmemRef,
    /// Offset of the first byte within that page or net_iov.
    pub offset: u32,
    /// Length in bytes (may run on into the following pages of the same region).
    pub len: u32,
}

/// A packet as an ordered list of frags with their host addresses.
pub struct FragList<'m> {
    frags: SmallVec<[Frag; MAX_INLINE_FRAGS]>,
    iov: SmallVec<[libc::iovec; MAX_INLINE_FRAGS]>,
    len: usize,
    _mem: PhantomData<&'m ()>,
}

impl Default for FragList<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'m> FragList<'m> {
    /// An empty list.
    pub fn new() -> Self {
        FragList {
            frags: SmallVec::new(),
            iov: SmallVec::new(),
            len: 0,
            _mem: PhantomData,
        }
    }

    /// Append a frag whose bytes live at `host` for `frag.len` bytes.
    ///
    /// # Safety
    /// `host..host + frag.len` must be mapped memory that stays valid for `'m`
    /// (callers obtain it from a bounds-checked `vm-memory` slice or a UMEM chunk
    /// borrowed for `'m`).
    pub unsafe fn push_unchecked(&mut self, frag: Frag, host: *mut u8) {
        self.len += frag.len as usize;
        self.frags.push(frag);
        self.iov.push(libc::iovec {
            iov_base: host.cast(),
            iov_len: frag.len as usize,
        });
    }

    /// Number of frags.
    pub fn nr_frags(&self) -> usize {
        self.frags.len()
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frags, in packet order.
    pub fn frags(&self) -> &[Frag] {
        &self.frags
    }

    /// The host iovecs, one per frag, for `readv`/`writev`.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }

    /// Remove the first `n` frags (all of them if fewer).
    pub fn drain_front(&mut self, n: usize) {
        let n = n.min(self.frags.len());
        self.len -= self.frags[..n]
            .iter()
            .map(|f| f.len as usize)
            .sum::<usize>();
        self.frags.drain(..n);
        self.iov.drain(..n);
    }

    /// Forget all frags (keeps the allocation).
    pub fn clear(&mut self) {
        self.frags.clear();
        self.iov.clear();
        self.len = 0;
    }

    /// Copy the packet bytes into `dst`; returns how many were copied
    /// (`min(self.len(), dst.len())`).
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for iov in &self.iov {
            let n = iov.iov_len.min(dst.len() - done);
            // SAFETY: each iovec covers mapped memory valid for 'm (push_unchecked's
            // contract) and `n <= iov_len`; `dst[done..done + n]` is in bounds because
            // `n <= dst.len() - done`; guest memory never overlaps a Rust slice we own.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    iov.iov_base.cast::<u8>(),
                    dst.as_mut_ptr().add(done),
                    n,
                )
            };
            done += n;
            if done == dst.len() {
                break;
            }
        }
        done
    }

    /// Copy `src` into the memory the frags describe, in order; returns how many
    /// bytes were written (`min(self.len(), src.len())`).
    pub fn copy_from(&self, src: &[u8]) -> usize {
        let mut done = 0;
        for iov in &self.iov {
            let n = iov.iov_len.min(src.len() - done);
            // SAFETY: as in `copy_to`, with the roles swapped: the iovec is writable
            // mapped memory valid for 'm and `src[done..done + n]` is in bounds.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr().add(done), iov.iov_base.cast::<u8>(), n)
            };
            done += n;
            if done == src.len() {
                break;
            }
        }
        done
    }
}

impl FragList<'_> {
    /// Copy the bytes of `src` into the memory these frags describe, starting `at`
    /// bytes into it; returns how many were written
    /// (`min(src.len(), self.len().saturating_sub(at))`). The two lists must not
    /// describe overlapping memory (guest buffers and a UMEM never do).
    pub fn copy_from_list(&self, at: usize, src: &FragList<'_>) -> usize {
        let mut dst = self.iov.iter();
        // Skip `at` bytes of the destination.
        let mut skip = at;
        let mut cur = loop {
            let Some(iov) = dst.next() else {
                return 0;
            };
            if skip < iov.iov_len {
                break (iov.iov_base.cast::<u8>(), iov.iov_len, skip);
            }
            skip -= iov.iov_len;
        };
        let mut done = 0;
        for s in &src.iov {
            let mut s_off = 0;
            while s_off < s.iov_len {
                let (base, len, off) = cur;
                if off == len {
                    match dst.next() {
                        Some(iov) => cur = (iov.iov_base.cast::<u8>(), iov.iov_len, 0),
                        None => return done,
                    }
                    continue;
                }
                let n = (len - off).min(s.iov_len - s_off);
                // SAFETY: both iovecs cover mapped memory valid for their lists'
                // lifetimes (`push_unchecked`'s contract); `off + n <= len` and
                // `s_off + n <= s.iov_len`, so both ranges are inside their iovecs, and
                // the caller guarantees the lists do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        s.iov_base.cast::<u8>().add(s_off),
                        base.add(off),
                        n,
                    )
                };
                cur.2 += n;
                s_off += n;
                done += n;
            }
        }
        done
    }
}

impl std::fmt::Debug for FragList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FragList")
            .field("len", &self.len)
            .field("frags", &self.frags)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list_over<'a>(bufs: &'a mut [Vec<u8>]) -> FragList<'a> {
        let mut l = FragList::new();
        for (i, b) in bufs.iter_mut().enumerate() {
            let frag = Frag {
                netmem: NetmemRef::page(0, i as u64),
                offset: 0,
                len: u32::try_from(b.len()).unwrap(),
            };
            // SAFETY: the buffer is borrowed mutably for the list's lifetime.
            unsafe { l.push_unchecked(frag, b.as_mut_ptr()) };
        }
        l
    }

    proptest! {
        #[test]
        fn copy_round_trips(sizes in proptest::collection::vec(0usize..300, 0..40), seed: u8) {
            let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
            let total: usize = sizes.iter().sum();
            let src: Vec<u8> = (0..total).map(|i| u8::try_from(i % 251).unwrap().wrapping_mul(31).wrapping_add(seed)).collect();
            let l = list_over(&mut bufs);
            prop_assert_eq!(l.len(), total);
            prop_assert_eq!(l.nr_frags(), sizes.len());
            prop_assert_eq!(l.copy_from(&src), total);
            let mut back = vec![0u8; total];
            prop_assert_eq!(l.copy_to(&mut back), total);
            prop_assert_eq!(&back, &src);
            let sum: usize = l.iovecs().iter().map(|v| v.iov_len).sum();
            prop_assert_eq!(sum, total);
        }

        #[test]
        fn short_destination_copies_prefix(sizes in proptest::collection::vec(1usize..100, 1..10), cut in 0usize..500) {
            let mut bufs: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![u8::try_from(i).unwrap(); n]).collect();
            let l = list_over(&mut bufs);
            let mut dst = vec![0xffu8; cut.min(l.len())];
            let n = l.copy_to(&mut dst);
            prop_assert_eq!(n, dst.len());
        }
    }

    proptest! {
        /// Copying list to list at an offset is the same as going through a flat
        /// buffer.
        #[test]
        fn list_to_list_copy_matches_flat(
            src_sizes in proptest::collection::vec(0usize..200, 0..12),
            dst_sizes in proptest::collection::vec(0usize..200, 0..12),
            at in 0usize..600,
        ) {
            let total: usize = src_sizes.iter().sum();
            let flat_src: Vec<u8> = (0..total).map(|i| u8::try_from(i % 253).unwrap()).collect();
            let mut src_bufs: Vec<Vec<u8>> = src_sizes.iter().map(|&n| vec![0u8; n]).collect();
            let src = list_over(&mut src_bufs);
            src.copy_from(&flat_src);
            let mut dst_bufs: Vec<Vec<u8>> = dst_sizes.iter().map(|&n| vec![0xeeu8; n]).collect();
            let dst_len: usize = dst_sizes.iter().sum();
            let dst = list_over(&mut dst_bufs);
            let n = dst.copy_from_list(at, &src);
            prop_assert_eq!(n, total.min(dst_len.saturating_sub(at)));
            let mut got = vec![0u8; dst_len];
            dst.copy_to(&mut got);
            let mut want = vec![0xeeu8; dst_len];
            if at < dst_len {
                want[at..at + n].copy_from_slice(&flat_src[..n]);
            }
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn drain_front_keeps_the_tail() {
        let mut bufs: Vec<Vec<u8>> = (1..=5u8).map(|i| vec![i; usize::from(i)]).collect();
        let mut l = list_over(&mut bufs);
        l.drain_front(2);
        assert_eq!(l.nr_frags(), 3);
        assert_eq!(l.len(), 3 + 4 + 5);
        let mut out = vec![0u8; l.len()];
        l.copy_to(&mut out);
        assert_eq!(out, [3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5]);
        l.drain_front(10);
        assert!(l.is_empty());
    }

    #[test]
    fn spills_beyond_inline_capacity() {
        let mut bufs: Vec<Vec<u8>> = (0..40).map(|_| vec![1u8; 3]).collect();
        let l = list_over(&mut bufs);
        assert_eq!(l.nr_frags(), 40);
        assert_eq!(l.len(), 120);
    }
}
