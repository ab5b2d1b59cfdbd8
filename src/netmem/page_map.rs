// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `GuestPageMap`: guest memory as regions of page descriptors (Linux: the memmap).
//!
//! `vm-memory` is the source of truth for mappings and bounds; `GuestPageMap` sits on top
//! and adds, per region, a lazily committed array of [`NetmemDesc`] (one per 4 KiB page)
//! plus a slot number that `NetmemRef` handles carry. A map is an immutable snapshot:
//! every memory update (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) publishes a new one
//! through [`SharedPageMap`], and workers load the current snapshot once per batch.
//! A removed region stays mapped until no snapshot and no page reference uses it.

use std::alloc::{self, Layout};
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::fault::FaultGuard;
use super::{Frag, FragList, NetmemDesc, NetmemRef};

/// Page size the descriptors describe.
pub const PAGE_SHIFT: u32 = 12;
/// 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Errors of the guest page map.
#[derive(Debug, thiserror::Error)]
pub enum PageMapError {
    /// guest range {gpa:#x}+{len:#x} is outside guest memory
    #[error("guest range {gpa:#x}+{len:#x} is outside guest memory")]
    OutOfRange {
        /// Start of the range.
        gpa: u64,
        /// Length of the range.
        len: u64,
    },
    /// guest range wraps around the address space
    #[error("guest range {gpa:#x}+{len:#x} wraps around the address space")]
    Wraps {
        /// Start of the range.
        gpa: u64,
        /// Length of the range.
        len: u64,
    },
    /// Mapping a region failed.
    #[error("cannot map guest region at {gpa:#x} ({size:#x} bytes): {source}")]
    Mmap {
        /// Guest-physical start.
        gpa: u64,
        /// Size.
        size: u64,
        /// Cause.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The new region list is invalid (overlap, empty region).
    #[error("invalid guest memory layout: {0}")]
    Layout(#[from] vm_memory::GuestRegionCollectionError),
    /// No region matches a removal request.
    #[error("no guest region at {gpa:#x} with size {size:#x}")]
    NoSuchRegion {
        /// Guest-physical start.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// Too many regions.
    #[error("too many guest memory regions (limit {0})")]
    TooManyRegions(usize),
    /// The region's fd could not be examined.
    #[error("cannot stat the file of guest region {gpa:#x}: {source}")]
    Fstat {
        /// Guest-physical start.
        gpa: u64,
        /// Cause.
        source: std::io::Error,
    },
    /// The region's fd is not a regular file (memfd, tmpfs or hugetlbfs file).
    #[error("guest region {gpa:#x}: its fd is not a regular file (memfd, tmpfs or hugetlbfs)")]
    NotAFile {
        /// Guest-physical start.
        gpa: u64,
    },
    /// A region of size 0.
    #[error("guest region {gpa:#x} has size 0")]
    Empty {
        /// Guest-physical start.
        gpa: u64,
    },
    /// The region's offset in its file is not page-aligned.
    #[error("guest region {gpa:#x}: mmap_offset {offset:#x} is not a multiple of {PAGE_SIZE:#x}")]
    Misaligned {
        /// Guest-physical start.
        gpa: u64,
        /// `mmap_offset`.
        offset: u64,
    },
    /// The region extends past the end of its file (accesses there would fault).
    #[error(
        "guest region {gpa:#x}: mmap_offset {offset:#x} + size {size:#x} is beyond its file ({file_size:#x} bytes)"
    )]
    BeyondFile {
        /// Guest-physical start.
        gpa: u64,
        /// `mmap_offset`.
        offset: u64,
        /// Claimed size.
        size: u64,
        /// Size of the file (fstat).
        file_size: u64,
    },
    /// The frontend's address range of the region wraps.
    #[error("guest region {gpa:#x}: frontend address {user_addr:#x} + size {size:#x} wraps")]
    UserAddrWraps {
        /// Guest-physical start.
        gpa: u64,
        /// Frontend virtual address.
        user_addr: u64,
        /// Size.
        size: u64,
    },
    /// The memory table exceeds the configured ceiling.
    #[error("guest memory of {total:#x} bytes exceeds the ceiling of {limit:#x} bytes (--max-guest-memory)")]
    TooMuchMemory {
        /// Total size asked for.
        total: u64,
        /// The ceiling.
        limit: u64,
    },
    /// The page descriptor array could not be allocated.
    #[error("cannot allocate {pages} page descriptors for guest region {gpa:#x}")]
    DescAlloc {
        /// Guest-physical start.
        gpa: u64,
        /// Pages of the region.
        pages: u64,
    },
}

/// Descriptors of one guest memory region.
#[derive(Debug)]
pub struct RegionPages {
    slot: u16,
    gpa: u64,
    size: u64,
    /// The frontend's virtual address of the region (ring addresses arrive as these).
    user_addr: u64,
    descs: Box<[NetmemDesc]>,
    /// Pages of this region with a non-zero `pp_ref_count`.
    pinned: AtomicUsize,
    /// ADD_MEM_REG requests naming this very region (QEMU sends one per vhost device,
    /// i.e. per queue pair); REM_MEM_REG unmaps it when the last one is removed.
    users: AtomicUsize,
}

impl RegionPages {
    /// Descriptors for a region of `size` bytes; an error (never an abort) when the
    /// array cannot be allocated.
    pub(crate) fn try_new(
        slot: u16,
        gpa: u64,
        size: u64,
        user_addr: u64,
    ) -> Result<Self, PageMapError> {
        let pages = size.div_ceil(PAGE_SIZE);
        let descs = usize::try_from(pages)
            .ok()
            .and_then(zeroed_descs)
            .ok_or(PageMapError::DescAlloc { gpa, pages })?;
        Ok(RegionPages {
            slot,
            gpa,
            size,
            user_addr,
            descs,
            pinned: AtomicUsize::new(0),
            users: AtomicUsize::new(1),
        })
    }

    #[cfg(test)]
    pub(crate) fn new(slot: u16, gpa: u64, size: u64, user_addr: u64) -> Self {
        Self::try_new(slot, gpa, size, user_addr).expect("descriptor array")
    }

    /// Slot number carried by this region's `NetmemRef`s.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// Guest-physical start.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Descriptor of page `index`, if in range.
    pub fn desc(&self, index: u64) -> Option<&NetmemDesc> {
        self.descs.get(usize::try_from(index).ok()?)
    }

    /// Take a reference on page `index` (held until [`Self::put_page`]).
    pub fn get_page(&self, index: u64) -> bool {
        match self.desc(index) {
            Some(d) => {
                if d.get_ref() {
                    self.pinned.fetch_add(1, Ordering::AcqRel);
                }
                true
            }
            None => false,
        }
    }

    /// Drop a reference taken with [`Self::get_page`].
    pub fn put_page(&self, index: u64) {
        if let Some(d) = self.desc(index) {
            if d.put_ref() {
                self.pinned.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Number of pages currently referenced.
    pub fn pinned_pages(&self) -> usize {
        self.pinned.load(Ordering::Acquire)
    }
}

/// A zero-filled descriptor array; large arrays come from fresh anonymous mappings, so
/// pages of it that are never touched are never resident (lazily committed: 8 bytes
/// per 4 KiB page, 0.2 % of the region, at most, and only where pages are used). None
/// when it cannot be allocated: the caller refuses the region instead of aborting.
fn zeroed_descs(n: usize) -> Option<Box<[NetmemDesc]>> {
    if n == 0 {
        return Some(Box::new([]));
    }
    let layout = Layout::array::<NetmemDesc>(n).ok()?;
    // SAFETY: `layout` has a non-zero size (n > 0, NetmemDesc is 8 bytes).
    let ptr = unsafe { alloc::alloc_zeroed(layout) }.cast::<NetmemDesc>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` is a fresh, non-null allocation of exactly `n` NetmemDescs with the
    // global allocator's layout for `[NetmemDesc; n]`, which is what Box<[T]> frees
    // with; all-zero bytes are a valid NetmemDesc (two AtomicU32 zeros).
    Some(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) })
}

/// Host address of the first byte of a region's mapping.
#[derive(Debug, Clone, Copy)]
struct HostBase(std::ptr::NonNull<u8>);

// SAFETY: a HostBase is only ever stored next to the Arc<GuestRegionMmap> that owns the
// mapping it points into (in GuestRegion), so it is valid wherever that Arc is; the
// memory is shared guest memory, accessed only through volatile reads/writes and
// syscalls, never through Rust references.
unsafe impl Send for HostBase {}
// SAFETY: as above: sharing the address between threads creates no references.
unsafe impl Sync for HostBase {}

/// One region of a snapshot: the vm-memory mapping and its page descriptors.
#[derive(Debug, Clone)]
pub struct GuestRegion {
    region: Arc<GuestRegionMmap>,
    pages: Arc<RegionPages>,
    host: HostBase,
    /// The mapping's range in the SIGBUS handler's table (see [`super::fault`]);
    /// declared after `region`, so it is unregistered only after the mapping is gone.
    _fault: Option<Arc<FaultGuard>>,
}

impl GuestRegion {
    /// Page descriptors of this region.
    pub fn pages(&self) -> &Arc<RegionPages> {
        &self.pages
    }

    /// The file backing the region and the region's offset in it (the memfd and
    /// `mmap_offset` the frontend sent), for mapping the region a second time.
    pub fn file_offset(&self) -> Option<(&File, u64)> {
        self.region.file_offset().map(|f| (f.file(), f.start()))
    }
}

/// An immutable snapshot of guest memory with its page descriptors.
#[derive(Debug, Default)]
pub struct GuestPageMap {
    mem: GuestMemoryMmap,
    regions: Vec<GuestRegion>,
    /// Which publication this snapshot is (0: the initial empty map).
    generation: u64,
}

impl GuestPageMap {
    /// The vm-memory view (for the virtqueues).
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Regions in guest-physical order.
    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    /// The guest-physical end of the highest region (0 without memory): what a dirty
    /// log must cover.
    pub fn guest_end(&self) -> u64 {
        self.regions()
            .iter()
            .map(|r| r.pages.gpa().saturating_add(r.pages.size()))
            .max()
            .unwrap_or(0)
    }

    /// Increases with every memory update of the [`SharedPageMap`] this snapshot came
    /// from: a user that keeps state derived from a snapshot (without holding it)
    /// compares generations to notice a new one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The region owning `slot`, if it is part of this snapshot.
    pub fn region_by_slot(&self, slot: u16) -> Option<&GuestRegion> {
        self.regions.iter().find(|r| r.pages.slot == slot)
    }

    /// Descriptor of the page a `NetmemRef` names (None for net_iovs and stale slots).
    pub fn desc(&self, netmem: NetmemRef) -> Option<&NetmemDesc> {
        if netmem.is_net_iov() {
            return None;
        }
        self.region_by_slot(netmem.owner())?
            .pages
            .desc(netmem.index())
    }

    fn find(&self, gpa: u64) -> Option<&GuestRegion> {
        let i = self.regions.partition_point(|r| r.pages.gpa <= gpa);
        let r = self.regions.get(i.checked_sub(1)?)?;
        (gpa - r.pages.gpa < r.pages.size).then_some(r)
    }

    /// Host address of `gpa..gpa + len` when the range lies inside one region.
    #[inline]
    fn host_range(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let r = self.find(gpa)?;
        let off = gpa - r.pages.gpa;
        if len > r.pages.size - off {
            return None;
        }
        let off = usize::try_from(off).ok()?;
        // SAFETY: `off + len <= size` of the region's mapping (checked above), so the
        // result stays inside the mapping that `r.host` points to.
        Some(unsafe { r.host.0.as_ptr().add(off) })
    }

    /// Read `N` bytes at `gpa` (volatile, in the widest aligned words) when they lie inside one
    /// region: the fast path for descriptors, ring entries and packet headers.
    #[inline]
    pub fn read_array<const N: usize>(&self, gpa: u64) -> Option<[u8; N]> {
        let p = self.host_range(gpa, u64::try_from(N).ok()?)?;
        // SAFETY: `p..p + N` is inside a live mapping (host_range) that `self` keeps
        // alive.
        Some(unsafe { volatile_load::<N>(p) })
    }

    /// Write `bytes` at `gpa` (volatile, in the widest aligned words) when they lie inside one
    /// region; false when they do not.
    #[inline]
    pub fn write_array<const N: usize>(&self, gpa: u64, bytes: [u8; N]) -> bool {
        let Some(p) = u64::try_from(N).ok().and_then(|n| self.host_range(gpa, n)) else {
            return false;
        };
        // SAFETY: `p..p + N` is inside a live, writable shared mapping (host_range) that
        // `self` keeps alive.
        unsafe { volatile_store(p, bytes) };
        true
    }

    /// Load a little-endian u16 at `gpa` with `order` (ring indices the guest writes
    /// concurrently); None when outside guest memory or misaligned.
    #[inline]
    pub fn load_u16(&self, gpa: u64, order: std::sync::atomic::Ordering) -> Option<u16> {
        let p = self.host_range(gpa, 2)?;
        if p.align_offset(std::mem::align_of::<std::sync::atomic::AtomicU16>()) != 0 {
            return None;
        }
        // SAFETY: as in `store_u16`: aligned, inside a live shared mapping kept alive by
        // `self`, accessed only atomically or volatilely on our side.
        let atomic = unsafe { std::sync::atomic::AtomicU16::from_ptr(p.cast::<u16>()) };
        Some(u16::from_le(atomic.load(order)))
    }

    /// Store a little-endian u16 at `gpa` with `order` (ring indices the guest reads
    /// concurrently); false when outside guest memory or misaligned.
    #[inline]
    pub fn store_u16(&self, gpa: u64, value: u16, order: std::sync::atomic::Ordering) -> bool {
        let Some(p) = self.host_range(gpa, 2) else {
            return false;
        };
        if p.align_offset(std::mem::align_of::<std::sync::atomic::AtomicU16>()) != 0 {
            return false;
        }
        // SAFETY: `p` is 2-byte aligned (checked) and `p..p + 2` lies inside a live
        // shared mapping that `self` keeps alive; the location is only ever accessed
        // atomically or volatilely on our side, never through a Rust reference.
        let atomic = unsafe { std::sync::atomic::AtomicU16::from_ptr(p.cast::<u16>()) };
        atomic.store(value.to_le(), order);
        true
    }

    /// Append frags covering guest range `gpa..gpa + len` to `list` (one frag per region
    /// the range touches). The whole range must be guest memory; on error nothing is
    /// appended.
    pub fn push_frags<'m>(
        &'m self,
        gpa: u64,
        len: u32,
        list: &mut FragList<'m>,
    ) -> Result<(), PageMapError> {
        let len64 = u64::from(len);
        let end = gpa
            .checked_add(len64)
            .ok_or(PageMapError::Wraps { gpa, len: len64 })?;
        // Validate first so that a failing range leaves `list` untouched.
        let mut at = gpa;
        while at < end {
            let r = self
                .find(at)
                .ok_or(PageMapError::OutOfRange { gpa, len: len64 })?;
            at = r.pages.gpa + r.pages.size;
        }
        let mut at = gpa;
        while at < end {
            let r = self
                .find(at)
                .ok_or(PageMapError::OutOfRange { gpa, len: len64 })?;
            let off = at - r.pages.gpa;
            let n = (end - at).min(r.pages.size - off);
            let n32 = u32::try_from(n).map_err(|_| PageMapError::OutOfRange { gpa, len: len64 })?;
            let host = usize::try_from(off)
                .ok()
                // SAFETY: `off + n <= size` of this region (n is clamped to the region's
                // end above), so the pointer stays inside the mapping `r.host` points to.
                .map(|o| unsafe { r.host.0.as_ptr().add(o) })
                .ok_or(PageMapError::OutOfRange { gpa, len: len64 })?;
            let frag = Frag {
                netmem: NetmemRef::page(r.pages.slot, off >> PAGE_SHIFT),
                offset: u32::try_from(off & (PAGE_SIZE - 1)).unwrap_or(0),
                len: n32,
            };
            // SAFETY: `host..host + n` lies inside this region's mapping (bounds above),
            // and the mapping is owned (through Arc) by `self`, which `list` borrows for 'm.
            unsafe { list.push_unchecked(frag, host) };
            at += n;
        }
        Ok(())
    }

    /// Translate a frontend virtual address (as in SET_VRING_ADDR) to guest-physical.
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = va.checked_sub(r.pages.user_addr)?;
            (off < r.pages.size).then(|| r.pages.gpa + off)
        })
    }

    /// Whether `gpa..gpa + len` lies entirely in guest memory.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let mut at = gpa;
        while at < end {
            match self.find(at) {
                Some(r) => at = r.pages.gpa + r.pages.size,
                None => return false,
            }
        }
        true
    }
}

/// A region description from the frontend: where, how big, which file at what offset.
#[derive(Debug)]
pub struct RegionSpec {
    /// Guest-physical start.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Backing file (memfd) and the offset of the region in it (`mmap_offset`).
    pub file: File,
    /// Offset of the region in `file`.
    pub offset: u64,
    /// The frontend's virtual address of the region.
    pub user_addr: u64,
}

/// Maximum number of regions (vhost-user's memory slot limit we advertise).
pub const MAX_REGIONS: usize = 32;

/// How long a region removal waits for in-flight frags before deferring the unmap.
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// The current `GuestPageMap`, replaced atomically on every memory update.
#[derive(Debug)]
pub struct SharedPageMap {
    current: ArcSwap<GuestPageMap>,
    generation: AtomicU64,
    next_slot: Mutex<u16>,
    retired: Mutex<Vec<Arc<RegionPages>>>,
    /// Ceiling on the total size of the regions (`--max-guest-memory`).
    limit: u64,
}

impl Default for SharedPageMap {
    fn default() -> Self {
        Self::with_limit(u64::MAX)
    }
}

/// Check a frontend's region against the file that backs it (as libvhost-user does):
/// a regular file, a page-aligned offset, a non-empty range that ends inside the file
/// (a mapping past the end of the file faults on access), addresses that do not wrap.
/// Returns the region's size.
pub fn check_region(spec: &RegionSpec) -> Result<u64, PageMapError> {
    let gpa = spec.gpa;
    if spec.size == 0 {
        return Err(PageMapError::Empty { gpa });
    }
    if spec.offset % PAGE_SIZE != 0 {
        return Err(PageMapError::Misaligned {
            gpa,
            offset: spec.offset,
        });
    }
    if gpa.checked_add(spec.size).is_none() {
        return Err(PageMapError::Wraps {
            gpa,
            len: spec.size,
        });
    }
    if spec.user_addr.checked_add(spec.size).is_none() {
        return Err(PageMapError::UserAddrWraps {
            gpa,
            user_addr: spec.user_addr,
            size: spec.size,
        });
    }
    let meta = spec
        .file
        .metadata()
        .map_err(|source| PageMapError::Fstat { gpa, source })?;
    if !meta.file_type().is_file() {
        return Err(PageMapError::NotAFile { gpa });
    }
    let beyond = || PageMapError::BeyondFile {
        gpa,
        offset: spec.offset,
        size: spec.size,
        file_size: meta.len(),
    };
    let end = spec.offset.checked_add(spec.size).ok_or_else(beyond)?;
    if end > meta.len() {
        return Err(beyond());
    }
    Ok(spec.size)
}

impl SharedPageMap {
    /// An empty map (no guest memory yet) without a ceiling on its size.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map whose regions may total at most `limit` bytes.
    pub fn with_limit(limit: u64) -> Self {
        SharedPageMap {
            current: ArcSwap::default(),
            generation: AtomicU64::new(0),
            next_slot: Mutex::new(0),
            retired: Mutex::new(Vec::new()),
            limit,
        }
    }

    /// Refuse a table of `total` bytes beyond the ceiling.
    fn check_total(&self, total: Option<u64>) -> Result<(), PageMapError> {
        match total {
            Some(t) if t <= self.limit => Ok(()),
            t => Err(PageMapError::TooMuchMemory {
                total: t.unwrap_or(u64::MAX),
                limit: self.limit,
            }),
        }
    }

    /// The current snapshot; hold it for one batch, not across sleeps.
    pub fn load(&self) -> Arc<GuestPageMap> {
        self.current.load_full()
    }

    fn map_region(&self, spec: RegionSpec) -> Result<GuestRegion, PageMapError> {
        check_region(&spec)?;
        let size = usize::try_from(spec.size).map_err(|_| PageMapError::OutOfRange {
            gpa: spec.gpa,
            len: spec.size,
        })?;
        let mapping = MmapRegion::from_file(FileOffset::new(spec.file, spec.offset), size)
            .map_err(|source| PageMapError::Mmap {
                gpa: spec.gpa,
                size: spec.size,
                source,
            })?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(spec.gpa)).ok_or(PageMapError::Wraps {
                gpa: spec.gpa,
                len: spec.size,
            })?;
        let slot = {
            let mut s = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
            *s = s.wrapping_add(1);
            *s
        };
        let host = std::ptr::NonNull::new(region.as_ptr()).ok_or(PageMapError::Wraps {
            gpa: spec.gpa,
            len: spec.size,
        })?;
        let pages = RegionPages::try_new(slot, spec.gpa, spec.size, spec.user_addr)?;
        let fault = super::fault::register(host.as_ptr(), size).map(Arc::new);
        if fault.is_none() {
            log::warn!(
                "guest region {:#x}: no room in the fault handler's table; a frontend shrinking its file would kill the process",
                spec.gpa
            );
        }
        Ok(GuestRegion {
            region: Arc::new(region),
            pages: Arc::new(pages),
            host: HostBase(host),
            _fault: fault,
        })
    }

    fn publish(&self, mut regions: Vec<GuestRegion>) -> Result<(), PageMapError> {
        if regions.len() > MAX_REGIONS {
            return Err(PageMapError::TooManyRegions(MAX_REGIONS));
        }
        regions.sort_by_key(|r| r.pages.gpa);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        if regions.is_empty() {
            self.current.store(Arc::new(GuestPageMap {
                generation,
                ..GuestPageMap::default()
            }));
            return Ok(());
        }
        let mem = GuestMemoryMmap::from_arc_regions(
            regions.iter().map(|r| Arc::clone(&r.region)).collect(),
        )?;
        self.current.store(Arc::new(GuestPageMap {
            mem,
            regions,
            generation,
        }));
        Ok(())
    }

    /// Replace the whole table (SET_MEM_TABLE).
    pub fn set_table(&self, specs: Vec<RegionSpec>) -> Result<(), PageMapError> {
        if specs.len() > MAX_REGIONS {
            return Err(PageMapError::TooManyRegions(MAX_REGIONS));
        }
        // Every region is checked before any is mapped.
        let mut total = Some(0u64);
        for spec in &specs {
            let size = check_region(spec)?;
            total = total.and_then(|t| t.checked_add(size));
        }
        self.check_total(total)?;
        let old = self.load();
        let regions = specs
            .into_iter()
            .map(|s| self.map_region(s))
            .collect::<Result<Vec<_>, _>>()?;
        self.publish(regions)?;
        let old_pages: Vec<Arc<RegionPages>> =
            old.regions().iter().map(|r| Arc::clone(&r.pages)).collect();
        drop(old);
        for pages in old_pages {
            self.retire(pages);
        }
        Ok(())
    }

    /// Add one region (ADD_MEM_REG).
    pub fn add_region(&self, spec: RegionSpec) -> Result<(), PageMapError> {
        let old = self.load();
        if let Some(same) = old.regions.iter().find(|r| {
            r.pages.gpa == spec.gpa
                && r.pages.size == spec.size
                && r.pages.user_addr == spec.user_addr
        }) {
            same.pages.users.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
        let size = check_region(&spec)?;
        let total = old
            .regions
            .iter()
            .try_fold(size, |t, r| t.checked_add(r.pages.size));
        self.check_total(total)?;
        if old.regions.len() >= MAX_REGIONS {
            return Err(PageMapError::TooManyRegions(MAX_REGIONS));
        }
        let mut regions = old.regions.clone();
        regions.push(self.map_region(spec)?);
        self.publish(regions)
    }

    /// Remove one region (REM_MEM_REG). The new map is published at once; the region's
    /// mapping is released only when no snapshot or page reference still uses it.
    pub fn remove_region(&self, gpa: u64, size: u64) -> Result<(), PageMapError> {
        let old = self.load();
        let pos = old
            .regions
            .iter()
            .position(|r| r.pages.gpa == gpa && r.pages.size == size)
            .ok_or(PageMapError::NoSuchRegion { gpa, size })?;
        if old.regions[pos].pages.users.fetch_sub(1, Ordering::AcqRel) > 1 {
            // Another vhost device of this frontend still uses it.
            return Ok(());
        }
        let mut regions = old.regions.clone();
        let removed = regions.remove(pos);
        drop(old);
        self.publish(regions)?;
        let pages = Arc::clone(&removed.pages);
        drop(removed);
        self.retire(pages);
        Ok(())
    }

    /// Wait (bounded) for a removed region to become unreferenced; if it does not,
    /// keep it on the retired list (still mapped) and report it.
    fn retire(&self, pages: Arc<RegionPages>) {
        let deadline = Instant::now() + REMOVE_WAIT;
        loop {
            // One count is ours; snapshots and frags in flight hold the others.
            if Arc::strong_count(&pages) == 1 && pages.pinned_pages() == 0 {
                return;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "guest region {:#x}+{:#x} still referenced ({} pages pinned); kept mapped until released",
                    pages.gpa,
                    pages.size,
                    pages.pinned_pages()
                );
                let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
                retired.retain(|p| Arc::strong_count(p) > 1 || p.pinned_pages() > 0);
                retired.push(pages);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Regions removed from the map but still referenced.
    pub fn retired_regions(&self) -> usize {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|p| Arc::strong_count(p) > 1 || p.pinned_pages() > 0);
        retired.len()
    }

    /// Drop all memory (frontend disconnected).
    pub fn clear(&self) {
        let _ = self.set_table(Vec::new());
    }
}

/// The widest word (8, 4, 2 or 1 bytes) that divides `n` and the alignment of `p`:
/// a volatile `[u8; N]` access is N single-byte accesses, so guest memory is read and
/// written in such words instead (descriptors are 16-byte aligned, used entries 8).
#[inline(always)]
fn word_for(p: *const u8, n: usize) -> usize {
    let addr = p as usize;
    [8, 4, 2]
        .into_iter()
        .find(|&w| n % w == 0 && addr % w == 0)
        .unwrap_or(1)
}

/// A volatile copy of the `N` bytes at `p`, in the widest aligned words `p` allows
/// (each word read once; the guest may write concurrently, so no reference is made).
///
/// # Safety
/// `p..p + N` must be readable memory for the duration of the call.
#[inline(always)]
unsafe fn volatile_load<const N: usize>(p: *const u8) -> [u8; N] {
    let mut out = [0u8; N];
    match word_for(p, N) {
        8 => {
            for (i, c) in out.chunks_exact_mut(8).enumerate() {
                // SAFETY: 8-aligned (word_for) and inside `p..p + N` (the caller's).
                let w = unsafe { std::ptr::read_volatile(p.cast::<u64>().add(i)) };
                c.copy_from_slice(&w.to_ne_bytes());
            }
        }
        4 => {
            for (i, c) in out.chunks_exact_mut(4).enumerate() {
                // SAFETY: as above, 4-aligned.
                let w = unsafe { std::ptr::read_volatile(p.cast::<u32>().add(i)) };
                c.copy_from_slice(&w.to_ne_bytes());
            }
        }
        2 => {
            for (i, c) in out.chunks_exact_mut(2).enumerate() {
                // SAFETY: as above, 2-aligned.
                let w = unsafe { std::ptr::read_volatile(p.cast::<u16>().add(i)) };
                c.copy_from_slice(&w.to_ne_bytes());
            }
        }
        // SAFETY: [u8; N] has alignment 1 and every bit pattern is valid.
        _ => out = unsafe { std::ptr::read_volatile(p.cast::<[u8; N]>()) },
    }
    out
}

/// A volatile store of `bytes` at `p`, in the widest aligned words `p` allows.
///
/// # Safety
/// `p..p + N` must be writable memory for the duration of the call.
#[inline(always)]
unsafe fn volatile_store<const N: usize>(p: *mut u8, bytes: [u8; N]) {
    match word_for(p, N) {
        8 => {
            for (i, c) in bytes.chunks_exact(8).enumerate() {
                let w = u64::from_ne_bytes(c.try_into().unwrap_or_default());
                // SAFETY: 8-aligned (word_for) and inside `p..p + N` (the caller's).
                unsafe { std::ptr::write_volatile(p.cast::<u64>().add(i), w) };
            }
        }
        4 => {
            for (i, c) in bytes.chunks_exact(4).enumerate() {
                let w = u32::from_ne_bytes(c.try_into().unwrap_or_default());
                // SAFETY: as above, 4-aligned.
                unsafe { std::ptr::write_volatile(p.cast::<u32>().add(i), w) };
            }
        }
        2 => {
            for (i, c) in bytes.chunks_exact(2).enumerate() {
                let w = u16::from_ne_bytes(c.try_into().unwrap_or_default());
                // SAFETY: as above, 2-aligned.
                unsafe { std::ptr::write_volatile(p.cast::<u16>().add(i), w) };
            }
        }
        // SAFETY: [u8; N] has alignment 1.
        _ => unsafe { std::ptr::write_volatile(p.cast::<[u8; N]>(), bytes) },
    }
}

#[cfg(test)]
pub(crate) mod tests;
