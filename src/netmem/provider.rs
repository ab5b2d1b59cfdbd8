// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `MemoryProvider`: where a page pool's memory comes from (Linux: `memory_provider_ops`).
//!
//! A provider owns one [`NetIovArea`] and hands its chunks to exactly one
//! [`PagePool`](super::PagePool) at a time: `init` when the pool attaches,
//! `alloc_netmems` in bulk on the pool's slow path, `release_netmem` for every netmem the
//! pool gives back (ring overflow, non-recyclable returns, pool teardown), `destroy` once
//! the pool's inflight count is 0. The pool calls it only under its own lock, so a
//! provider needs `Send` but not `Sync`.
//!
//! [`AreaProvider`] is the one implementation, a LIFO free list over an area; what
//! differs between "host pages", "hugetlb" and "UMEM" memory is only how the area was
//! made:
//! - [`AreaProvider::host_pages`]: anonymous memory (`mmap`), 4 KiB chunks typically;
//! - [`AreaProvider::hugetlb`]: a `MFD_HUGETLB` memfd, falling back to anonymous memory
//!   with a log line when not enough huge pages are free;
//! - [`AreaProvider::new`]: any area, such as an AF_XDP UMEM built with
//!   [`NetIovArea::from_raw_parts`].

use std::ptr::NonNull;
use std::sync::Arc;

use super::{AreaBacking, NetIovArea, NetmemRef, PagePoolError, NETMEM_DESC_EXTERNAL_REF};

/// Source of a page pool's memory (Linux: `struct memory_provider_ops`).
pub trait MemoryProvider: Send {
    /// Attach to pool `pool_id` (Linux: `init`). A provider serves one pool at a time.
    fn init(&mut self, pool_id: u32) -> Result<(), PagePoolError>;

    /// Fill `out` with free netmems, as many as are available up to `out.len()`, and
    /// return how many were written (Linux: `alloc_netmems`, in bulk).
    fn alloc_netmems(&mut self, out: &mut [NetmemRef]) -> usize;

    /// Take back a netmem this provider handed out (Linux: `release_netmem`).
    fn release_netmem(&mut self, netmem: NetmemRef);

    /// Detach from the pool; called once no netmem is in flight (Linux: `destroy`).
    fn destroy(&mut self);

    /// The area every netmem of this provider is a chunk of.
    fn area(&self) -> &Arc<NetIovArea>;

    /// Host address and length of a netmem this provider handed out, so that it can
    /// become a `Frag` on a `FragList` (see [`NetIovArea::push_frag`]).
    fn resolve(&self, netmem: NetmemRef) -> Option<(NonNull<u8>, u32)> {
        let niov = self.area().net_iov(netmem)?;
        Some((niov.addr(), niov.len()))
    }
}

/// A memory provider over the chunks of one [`NetIovArea`].
#[derive(Debug)]
pub struct AreaProvider {
    area: Arc<NetIovArea>,
    /// Free chunk indices, popped from the end (LIFO keeps recently used memory warm).
    free: Vec<u32>,
    /// Chunks released while still externally referenced; free once the flag clears.
    deferred: Vec<u32>,
    /// The pool this provider is attached to.
    pool: Option<u32>,
}

impl AreaProvider {
    /// A provider over `area`.
    pub fn new(area: Arc<NetIovArea>) -> Self {
        AreaProvider {
            area,
            free: Vec::new(),
            deferred: Vec::new(),
            pool: None,
        }
    }

    /// A provider over `len` bytes of anonymous host memory in `chunk_size` chunks.
    pub fn host_pages(len: usize, chunk_size: u32) -> Result<Self, PagePoolError> {
        Ok(Self::new(Arc::new(NetIovArea::anonymous(len, chunk_size)?)))
    }

    /// A provider over a hugetlb memfd of `len` bytes (rounded up to the huge page
    /// size) in `chunk_size` chunks; when huge pages are not available, falls back to
    /// anonymous memory and logs why. [`NetIovArea::backing`] tells which one it got.
    pub fn hugetlb(len: usize, chunk_size: u32) -> Result<Self, PagePoolError> {
        match NetIovArea::memfd(len, chunk_size, true) {
            Ok(area) => Ok(Self::new(Arc::new(area))),
            Err(e) => {
                log::warn!(
                    "page pool memory: {e}; falling back to anonymous 4 KiB pages \
                     (free huge pages: raise /proc/sys/vm/nr_hugepages)"
                );
                Self::host_pages(len, chunk_size)
            }
        }
    }

    /// Where the provider's memory comes from.
    pub fn backing(&self) -> AreaBacking {
        self.area.backing()
    }

    /// Chunks ready to be handed out (deferred ones not counted).
    pub fn free_chunks(&self) -> usize {
        self.free.len()
    }
}

/// Whether chunk `idx` of `area` is still referenced outside the pool.
fn externally_referenced(area: &NetIovArea, idx: u32) -> bool {
    area.net_iov_at(idx)
        .is_some_and(|n| n.desc().flags() & NETMEM_DESC_EXTERNAL_REF != 0)
}

impl MemoryProvider for AreaProvider {
    fn init(&mut self, pool_id: u32) -> Result<(), PagePoolError> {
        if let Some(pool) = self.pool {
            return Err(PagePoolError::ProviderInUse {
                area: self.area.id(),
                pool,
            });
        }
        self.pool = Some(pool_id);
        self.deferred.clear();
        self.free = (0..self.area.nr_chunks()).rev().collect();
        Ok(())
    }

    fn alloc_netmems(&mut self, out: &mut [NetmemRef]) -> usize {
        if !self.deferred.is_empty() {
            let (area, free) = (&self.area, &mut self.free);
            self.deferred.retain(|&idx| {
                let busy = externally_referenced(area, idx);
                if !busy {
                    free.push(idx);
                }
                busy
            });
        }
        let n = out.len().min(self.free.len());
        let from = self.free.len() - n;
        let id = self.area.id();
        for (slot, idx) in out.iter_mut().zip(self.free.drain(from..).rev()) {
            *slot = NetmemRef::net_iov(id, u64::from(idx));
        }
        n
    }

    fn release_netmem(&mut self, netmem: NetmemRef) {
        let Some(niov) = self.area.net_iov(netmem) else {
            log::error!(
                "{netmem:?} released to the provider of area {}, which does not own it",
                self.area.id()
            );
            return;
        };
        let idx = niov.index();
        if externally_referenced(&self.area, idx) {
            self.deferred.push(idx);
        } else {
            self.free.push(idx);
        }
    }

    fn destroy(&mut self) {
        self.pool = None;
        self.free = Vec::new();
        self.deferred = Vec::new();
    }

    fn area(&self) -> &Arc<NetIovArea> {
        &self.area
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_every_chunk_once_then_runs_dry() {
        let mut p = AreaProvider::host_pages(8 * 4096, 4096).unwrap();
        assert_eq!(p.backing(), AreaBacking::Anonymous);
        p.init(1).unwrap();
        let mut out = [NetmemRef::from_raw(0); 5];
        assert_eq!(p.alloc_netmems(&mut out), 5);
        let mut out2 = [NetmemRef::from_raw(0); 5];
        assert_eq!(p.alloc_netmems(&mut out2), 3);
        let mut all: Vec<u64> = out.iter().chain(&out2[..3]).map(|n| n.index()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(p.alloc_netmems(&mut out), 0);
        p.release_netmem(out[2]);
        assert_eq!(p.alloc_netmems(&mut out2), 1);
        assert_eq!(out2[0], out[2]);
    }

    #[test]
    fn serves_one_pool_at_a_time() {
        let mut p = AreaProvider::host_pages(4096, 4096).unwrap();
        p.init(1).unwrap();
        assert!(matches!(
            p.init(2),
            Err(PagePoolError::ProviderInUse { pool: 1, .. })
        ));
        p.destroy();
        p.init(2).unwrap();
    }

    #[test]
    fn externally_referenced_chunks_wait() {
        let mut p = AreaProvider::host_pages(2 * 4096, 4096).unwrap();
        p.init(1).unwrap();
        let mut out = [NetmemRef::from_raw(0); 2];
        assert_eq!(p.alloc_netmems(&mut out), 2);
        let desc = p.area().desc(out[0]).unwrap();
        desc.set_flags(NETMEM_DESC_EXTERNAL_REF);
        p.release_netmem(out[0]);
        assert_eq!(p.free_chunks(), 0);
        let mut one = [NetmemRef::from_raw(0); 1];
        assert_eq!(p.alloc_netmems(&mut one), 0);
        p.area()
            .desc(out[0])
            .unwrap()
            .clear_flags(NETMEM_DESC_EXTERNAL_REF);
        assert_eq!(p.alloc_netmems(&mut one), 1);
        assert_eq!(one[0], out[0]);
    }

    #[test]
    fn foreign_netmems_are_not_taken() {
        let mut p = AreaProvider::host_pages(4096, 4096).unwrap();
        p.init(1).unwrap();
        p.release_netmem(NetmemRef::page(p.area().id(), 0));
        p.release_netmem(NetmemRef::net_iov(p.area().id(), 1));
        assert_eq!(p.free_chunks(), 1);
    }

    #[test]
    fn resolves_its_netmems() {
        let mut p = AreaProvider::host_pages(4 * 2048, 2048).unwrap();
        p.init(1).unwrap();
        let mut out = [NetmemRef::from_raw(0); 4];
        assert_eq!(p.alloc_netmems(&mut out), 4);
        for n in out {
            let (addr, len) = p.resolve(n).unwrap();
            assert_eq!(len, 2048);
            // SAFETY: the chunk lies inside the area, which `p` keeps alive.
            let expect = unsafe {
                p.area()
                    .as_ptr()
                    .as_ptr()
                    .add(2048 * usize::try_from(n.index()).unwrap())
            };
            assert_eq!(addr.as_ptr(), expect);
        }
        assert!(p.resolve(NetmemRef::net_iov(p.area().id(), 4)).is_none());
    }
}
