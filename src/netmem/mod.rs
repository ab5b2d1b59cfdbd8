// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The netmem memory model (after Linux's `include/net/netmem.h` and `page_pool`).
//!
//! - `netmem_ref`: [`NetmemRef`], tagged handle to a page of guest memory or a net_iov.
//! - `desc`: [`NetmemDesc`], page-like descriptor with `pp_ref_count`.
//! - `page_map`: [`GuestPageMap`], guest memory regions with their descriptors,
//!   following every memory update through [`SharedPageMap`]; every region checked
//!   against its file.
//! - [`DirtyLog`]: the migration dirty log shared with the frontend (SET_LOG_BASE),
//!   one bit per 4 KiB guest page the backend wrote.
//! - [`fault`]: the SIGBUS handler that turns a frontend shrinking a region's file
//!   into a fault counted and reported to the control plane, not a dead process.
//! - `net_iov`: [`NetIovArea`], [`NetIov`]: device regions (UMEM, hugepage or memfd
//!   arenas) cut into fixed-size chunks.
//! - `frag`: [`Frag`], [`FragList`]: a packet as a list of contiguous pieces.
//! - `page_pool`: [`PagePool`], the per-queue recycling allocator of net_iovs (alloc
//!   cache, recycle ring, frags); in `page_pool/`, its [`PagePoolStats`] (`stats.rs`),
//!   destroyed pools still waiting for netmems ([`parked_pools`], `parked.rs`) and its
//!   tests.
//! - `provider`: [`MemoryProvider`], where a pool's memory comes from; [`AreaProvider`]
//!   over host pages, hugetlb memfds or a caller's area.

mod desc;
mod dirty_log;
pub mod fault;
mod frag;
mod net_iov;
mod netmem_ref;
mod page_map;
mod page_pool;
mod provider;

pub use desc::{NetmemDesc, NETMEM_DESC_EXTERNAL_REF};
pub use dirty_log::{DirtyLog, DirtyLogError, VHOST_LOG_PAGE};
pub use frag::{Frag, FragList, MAX_INLINE_FRAGS};
pub use net_iov::{default_hugepage_size, AreaBacking, NetIov, NetIovArea, NetIovError};
pub use netmem_ref::{NetmemKind, NetmemRef};
pub use page_map::{
    check_region, GuestPageMap, GuestRegion, PageMapError, RegionPages, RegionSpec, SharedPageMap,
    MAX_REGIONS, PAGE_SIZE,
};
pub use page_pool::{
    parked_pools, PagePool, PagePoolDestroy, PagePoolError, PagePoolParams, PagePoolParked,
    PagePoolRecycler, PagePoolStats, PagePoolStatsReader, PP_ALLOC_CACHE_REFILL,
    PP_ALLOC_CACHE_SIZE, PP_FRAG_ALIGN, PP_RING_SIZE_DEFAULT,
};
pub use provider::{AreaProvider, MemoryProvider};

#[cfg(test)]
pub(crate) use page_map::tests::memfd as test_memfd;
