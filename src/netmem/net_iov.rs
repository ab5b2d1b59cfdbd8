// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `NetIovArea` and `NetIov`: fixed-size chunks of a device region.
//!
//! The analogue of Linux's `struct net_iov_area` and `struct net_iov`: memory that
//! belongs to the uplink device rather than the guest (an AF_XDP UMEM, or a hugepage /
//! memfd arena standing in for device memory), cut into chunks of one size. Chunk `idx`
//! of area `id` travels as `NetmemRef::net_iov(id, idx)` (Linux: `idx = niov -
//! area->niovs`), and each chunk carries a [`NetmemDesc`] (Linux embeds a
//! `netmem_desc` in every `net_iov`) for its page pool ownership and `pp_ref_count`.
//!
//! An area is built over fresh anonymous memory ([`NetIovArea::anonymous`]), over a
//! memfd, optionally hugetlb-backed ([`NetIovArea::memfd`]), or over memory a caller
//! already owns, such as a UMEM registered elsewhere
//! ([`NetIovArea::from_raw_parts`]). Area ids are unique among live areas, so handles
//! from different areas never collide. Our areas are always readable: every chunk has
//! a host address.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Mutex;

use super::{Frag, FragList, NetmemDesc, NetmemRef};

/// Errors of net_iov areas.
#[derive(Debug, thiserror::Error)]
pub enum NetIovError {
    /// Mapping the area's memory failed.
    #[error("cannot map {len} bytes for a net_iov area: {source}")]
    Mmap {
        /// Requested length.
        len: usize,
        /// Cause.
        source: io::Error,
    },
    /// Creating or sizing the backing memfd failed.
    #[error("cannot create a {len}-byte memfd (hugetlb: {hugetlb}) for a net_iov area: {source}")]
    Memfd {
        /// Requested length.
        len: usize,
        /// Whether hugetlb pages were asked for.
        hugetlb: bool,
        /// Cause.
        source: io::Error,
    },
    /// The chunk size does not fit the area.
    #[error("invalid net_iov chunk size {chunk_size} for an area of {len} bytes")]
    ChunkSize {
        /// Requested chunk size.
        chunk_size: u32,
        /// Area length.
        len: usize,
    },
    /// The area has more chunks than a handle or the pool's indices can carry.
    #[error("net_iov area of {len} bytes has too many {chunk_size}-byte chunks")]
    TooManyChunks {
        /// Area length.
        len: usize,
        /// Chunk size.
        chunk_size: u32,
    },
    /// All 65536 area ids are in use.
    #[error("no free net_iov area id (all 65536 in use)")]
    NoAreaId,
    /// A handle does not name a chunk of this area.
    #[error("{netmem:?} is not a chunk of net_iov area {area}")]
    NotInArea {
        /// The handle.
        netmem: NetmemRef,
        /// This area's id.
        area: u16,
    },
    /// A frag would run past the end of its chunk.
    #[error("frag {offset}+{len} runs past the end of a {chunk_size}-byte chunk")]
    FragOutOfChunk {
        /// Offset in the chunk.
        offset: u32,
        /// Frag length.
        len: u32,
        /// Chunk size.
        chunk_size: u32,
    },
}

/// Where an area's memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AreaBacking {
    /// Private anonymous memory mapped for the area.
    Anonymous,
    /// A memfd mapped shared; `hugetlb` when it is backed by hugetlb pages.
    Memfd {
        /// Whether the memfd was created with `MFD_HUGETLB`.
        hugetlb: bool,
    },
    /// Memory owned by the caller (for instance an AF_XDP UMEM).
    External,
}

/// Area ids in use (65536 bits).
static AREA_IDS: Mutex<[u64; 1024]> = Mutex::new([0; 1024]);

fn alloc_area_id() -> Result<u16, NetIovError> {
    let mut ids = AREA_IDS.lock().unwrap_or_else(|e| e.into_inner());
    let (word_idx, word) = ids
        .iter_mut()
        .enumerate()
        .find(|(_, w)| **w != u64::MAX)
        .ok_or(NetIovError::NoAreaId)?;
    let bit = (0..64).find(|b| *word & (1u64 << b) == 0).unwrap_or(0);
    *word |= 1 << bit;
    // word_idx < 1024 and bit < 64: the id is below 65536.
    u16::try_from(word_idx * 64 + bit).map_err(|_| NetIovError::NoAreaId)
}

fn free_area_id(id: u16) {
    let mut ids = AREA_IDS.lock().unwrap_or_else(|e| e.into_inner());
    let id = usize::from(id);
    ids[id / 64] &= !(1 << (id % 64));
}

/// A memory mapping the area made itself and unmaps on drop.
#[derive(Debug)]
struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Map `len` bytes read-write: anonymous private memory, or `fd` shared.
    fn new(len: usize, fd: Option<BorrowedFd<'_>>) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let (flags, raw_fd) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping at an address the kernel chooses (addr NULL, no
        // MAP_FIXED) cannot overlap any existing Rust object; `raw_fd` is either -1 with
        // MAP_ANONYMOUS or a descriptor borrowed for the duration of the call. The result
        // is checked against MAP_FAILED below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Mapping { addr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is exactly the mapping `Mapping::new` created and
        // nothing else unmaps it; the area that owns this Mapping is being dropped, and
        // every borrower of the memory (a FragList borrowing the area, an `Arc` holder)
        // is gone by then, so no pointer into it is used afterwards.
        let rc = unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
        if rc != 0 {
            log::warn!(
                "munmap of a {}-byte net_iov area failed: {}",
                self.len,
                io::Error::last_os_error()
            );
        }
    }
}

/// What keeps the memory alive.
#[derive(Debug)]
enum Memory {
    Owned {
        _mapping: Mapping,
        memfd: Option<File>,
        hugetlb: bool,
    },
    External,
}

/// A device region cut into fixed-size chunks (Linux: `struct net_iov_area`).
#[derive(Debug)]
pub struct NetIovArea {
    id: u16,
    base: NonNull<u8>,
    len: usize,
    chunk_size: u32,
    nr_chunks: u32,
    nid: Option<u32>,
    descs: Box<[NetmemDesc]>,
    memory: Memory,
}

// SAFETY: the area never creates Rust references into its memory, only raw pointers
// handed to callers under `FragList::push_unchecked`'s contract; the memory is owned by
// the area (a mapping unmapped only on drop) or, for external memory, guaranteed valid
// for the area's life by `from_raw_parts`' caller. The descriptors are atomics. So the
// area can move to and be shared with any thread.
unsafe impl Send for NetIovArea {}
// SAFETY: as for Send: all shared state is either immutable or atomic.
unsafe impl Sync for NetIovArea {}

/// Number of `chunk_size` chunks in `len` bytes: at least one, and countable in u32.
fn nr_chunks(len: usize, chunk_size: u32) -> Result<u32, NetIovError> {
    let chunk =
        usize::try_from(chunk_size).map_err(|_| NetIovError::ChunkSize { chunk_size, len })?;
    if chunk == 0 || chunk > len {
        return Err(NetIovError::ChunkSize { chunk_size, len });
    }
    u32::try_from(len / chunk).map_err(|_| NetIovError::TooManyChunks { len, chunk_size })
}

impl NetIovArea {
    fn build(
        base: NonNull<u8>,
        len: usize,
        chunk_size: u32,
        memory: Memory,
    ) -> Result<Self, NetIovError> {
        let nr_chunks = nr_chunks(len, chunk_size)?;
        let descs = (0..nr_chunks).map(|_| NetmemDesc::default()).collect();
        let id = alloc_area_id()?;
        Ok(NetIovArea {
            id,
            base,
            len,
            chunk_size,
            nr_chunks,
            nid: None,
            descs,
            memory,
        })
    }

    /// An area over `len` bytes of fresh private anonymous memory.
    pub fn anonymous(len: usize, chunk_size: u32) -> Result<Self, NetIovError> {
        nr_chunks(len, chunk_size)?;
        let mapping =
            Mapping::new(len, None).map_err(|source| NetIovError::Mmap { len, source })?;
        let base = mapping.addr;
        Self::build(
            base,
            len,
            chunk_size,
            Memory::Owned {
                _mapping: mapping,
                memfd: None,
                hugetlb: false,
            },
        )
    }

    /// An area over a new memfd of at least `len` bytes, mapped shared (so the fd can
    /// be handed to another process). With `hugetlb`, the memfd is created with
    /// `MFD_HUGETLB` and `len` is rounded up to the default huge page size; this fails
    /// when not enough huge pages are free (see `/proc/sys/vm/nr_hugepages`).
    pub fn memfd(len: usize, chunk_size: u32, hugetlb: bool) -> Result<Self, NetIovError> {
        nr_chunks(len, chunk_size)?;
        let memfd_err = |source| NetIovError::Memfd {
            len,
            hugetlb,
            source,
        };
        let map_len = if hugetlb {
            let huge = default_hugepage_size();
            len.checked_next_multiple_of(huge)
                .ok_or_else(|| memfd_err(io::Error::from(io::ErrorKind::InvalidInput)))?
        } else {
            len
        };
        let mut flags = libc::MFD_CLOEXEC;
        if hugetlb {
            flags |= libc::MFD_HUGETLB;
        }
        // SAFETY: the name is a NUL-terminated C string literal and `flags` are valid
        // memfd_create flags; the result is checked below.
        let fd = unsafe { libc::memfd_create(c"vhost-netmem-net-iov".as_ptr(), flags) };
        if fd < 0 {
            return Err(memfd_err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor returned by memfd_create that nothing else
        // owns; OwnedFd takes sole ownership and closes it once.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let file_len = u64::try_from(map_len)
            .map_err(|_| memfd_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        file.set_len(file_len).map_err(memfd_err)?;
        let mapping =
            Mapping::new(map_len, Some(file.as_fd())).map_err(|source| NetIovError::Mmap {
                len: map_len,
                source,
            })?;
        let base = mapping.addr;
        Self::build(
            base,
            len,
            chunk_size,
            Memory::Owned {
                _mapping: mapping,
                memfd: Some(file),
                hugetlb,
            },
        )
    }

    /// An area over memory the caller owns (for instance a UMEM registered elsewhere).
    ///
    /// # Safety
    /// `base..base + len` must be mapped, readable and writable memory that stays valid
    /// (neither unmapped nor remapped) until this area and every `Arc` to it are dropped.
    /// The caller must not hold Rust references (`&`/`&mut` slices) into it while the
    /// area is in use, since frags hand out raw pointers into it that are read and
    /// written at any time; other users of the memory (the kernel, for a UMEM) must only
    /// touch chunks they own by the AF_XDP ring protocol.
    pub unsafe fn from_raw_parts(
        base: NonNull<u8>,
        len: usize,
        chunk_size: u32,
    ) -> Result<Self, NetIovError> {
        Self::build(base, len, chunk_size, Memory::External)
    }

    /// Record the NUMA node the memory lives on (for a UMEM: the NIC's node). A page
    /// pool with another preferred node waives this area's netmems on refill.
    pub fn with_nid(mut self, nid: u32) -> Self {
        self.nid = Some(nid);
        self
    }

    /// The area id carried by this area's `NetmemRef`s.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// NUMA node of the memory, if known.
    pub fn nid(&self) -> Option<u32> {
        self.nid
    }

    /// Length in bytes (the chunks cover `nr_chunks() * chunk_size()` of it).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the area has no bytes (never true: an area has at least one chunk).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size of every chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of chunks (Linux: `num_niovs`).
    pub fn nr_chunks(&self) -> u32 {
        self.nr_chunks
    }

    /// Start of the area's memory (to register it as a UMEM, for instance).
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }

    /// Where the memory comes from.
    pub fn backing(&self) -> AreaBacking {
        match &self.memory {
            Memory::Owned { memfd: None, .. } => AreaBacking::Anonymous,
            Memory::Owned {
                memfd: Some(_),
                hugetlb,
                ..
            } => AreaBacking::Memfd { hugetlb: *hugetlb },
            Memory::External => AreaBacking::External,
        }
    }

    /// The backing memfd, for memfd areas.
    pub fn memfd_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.memory {
            Memory::Owned { memfd: Some(f), .. } => Some(f.as_fd()),
            _ => None,
        }
    }

    /// Chunk index of `netmem` if it names a chunk of this area.
    #[inline]
    fn index_of(&self, netmem: NetmemRef) -> Option<u32> {
        if !netmem.is_net_iov() || netmem.owner() != self.id {
            return None;
        }
        let idx = u32::try_from(netmem.index()).ok()?;
        (idx < self.nr_chunks).then_some(idx)
    }

    /// The net_iov a handle names, if it is a chunk of this area.
    #[inline]
    pub fn net_iov(&self, netmem: NetmemRef) -> Option<NetIov<'_>> {
        let idx = self.index_of(netmem)?;
        Some(NetIov { area: self, idx })
    }

    /// Chunk `idx` of this area.
    pub fn net_iov_at(&self, idx: u32) -> Option<NetIov<'_>> {
        (idx < self.nr_chunks).then_some(NetIov { area: self, idx })
    }

    /// The chunk holding byte `offset` of the area, with the offset inside the chunk
    /// (an AF_XDP descriptor address maps back to its net_iov this way).
    pub fn netmem_at_offset(&self, offset: u64) -> Option<(NetmemRef, u32)> {
        let chunk = u64::from(self.chunk_size);
        let idx = u32::try_from(offset / chunk).ok()?;
        if idx >= self.nr_chunks {
            return None;
        }
        let within = u32::try_from(offset % chunk).ok()?;
        Some((NetmemRef::net_iov(self.id, u64::from(idx)), within))
    }

    /// Descriptor of the chunk a handle names.
    #[inline]
    pub fn desc(&self, netmem: NetmemRef) -> Option<&NetmemDesc> {
        let idx = self.index_of(netmem)?;
        self.descs.get(usize::try_from(idx).ok()?)
    }

    /// Append a frag of `len` bytes at `offset` in chunk `netmem` to `list`.
    pub fn push_frag<'m>(
        &'m self,
        netmem: NetmemRef,
        offset: u32,
        len: u32,
        list: &mut FragList<'m>,
    ) -> Result<(), NetIovError> {
        let niov = self.net_iov(netmem).ok_or(NetIovError::NotInArea {
            netmem,
            area: self.id,
        })?;
        let chunk_size = self.chunk_size;
        if offset.checked_add(len).map_or(true, |end| end > chunk_size) {
            return Err(NetIovError::FragOutOfChunk {
                offset,
                len,
                chunk_size,
            });
        }
        let offset_in_chunk = usize::try_from(offset).map_err(|_| NetIovError::FragOutOfChunk {
            offset,
            len,
            chunk_size,
        })?;
        // SAFETY: `offset <= chunk_size` was checked, so the result stays inside this
        // chunk's part of the area's allocation.
        let host = unsafe { niov.addr().as_ptr().add(offset_in_chunk) };
        // SAFETY: `offset + len <= chunk_size` was checked, so `host..host + len` lies
        // inside this chunk, which lies inside the area's memory; that memory stays
        // mapped while the area lives (owned mapping, or `from_raw_parts`' contract),
        // and `list` borrows the area for 'm.
        unsafe {
            list.push_unchecked(
                Frag {
                    netmem,
                    offset,
                    len,
                },
                host,
            )
        };
        Ok(())
    }
}

impl Drop for NetIovArea {
    fn drop(&mut self) {
        free_area_id(self.id);
    }
}

/// One chunk of a [`NetIovArea`] (Linux: `struct net_iov`).
#[derive(Clone, Copy, Debug)]
pub struct NetIov<'a> {
    area: &'a NetIovArea,
    idx: u32,
}

impl<'a> NetIov<'a> {
    /// The handle naming this chunk.
    pub fn netmem(&self) -> NetmemRef {
        NetmemRef::net_iov(self.area.id, u64::from(self.idx))
    }

    /// Chunk number in its area (Linux: `net_iov_idx`).
    pub fn index(&self) -> u32 {
        self.idx
    }

    /// The owning area (Linux: `net_iov_owner`).
    pub fn area(&self) -> &'a NetIovArea {
        self.area
    }

    /// The chunk's descriptor (pool ownership, `pp_ref_count`, flags).
    pub fn desc(&self) -> &'a NetmemDesc {
        &self.area.descs[usize::try_from(self.idx).unwrap_or(usize::MAX)]
    }

    /// Offset of the chunk from the start of the area (an AF_XDP UMEM address).
    pub fn area_offset(&self) -> u64 {
        u64::from(self.idx) * u64::from(self.area.chunk_size)
    }

    /// Host address of the chunk's first byte.
    pub fn addr(&self) -> NonNull<u8> {
        // idx < nr_chunks and nr_chunks * chunk_size <= len, so the offset fits in usize.
        let off = usize::try_from(self.area_offset()).unwrap_or(usize::MAX);
        // SAFETY: `off + chunk_size <= nr_chunks * chunk_size <= len`, so the result
        // stays inside the area's allocation (`add` requires in-bounds offsets), and an
        // in-bounds offset of a non-null pointer is non-null.
        unsafe { NonNull::new_unchecked(self.area.base.as_ptr().add(off)) }
    }

    /// Length of the chunk (the area's chunk size).
    pub fn len(&self) -> u32 {
        self.area.chunk_size
    }

    /// Always false: chunks are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The default huge page size from `/proc/meminfo` (2 MiB if it cannot be read).
pub fn default_hugepage_size() -> usize {
    const FALLBACK: usize = 2 << 20;
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return FALLBACK;
    };
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Hugepagesize:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<usize>().ok())
        .and_then(|kb| kb.checked_mul(1024))
        .unwrap_or(FALLBACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_area_chunks_and_handles() {
        let area = NetIovArea::anonymous(10 * 4096 + 100, 4096).unwrap();
        assert_eq!(area.nr_chunks(), 10);
        assert_eq!(area.backing(), AreaBacking::Anonymous);
        let n = area.net_iov_at(3).unwrap();
        assert_eq!(n.netmem(), NetmemRef::net_iov(area.id(), 3));
        assert_eq!(n.area_offset(), 3 * 4096);
        // SAFETY: chunk 3 starts 3 * 4096 bytes into the area.
        assert_eq!(n.addr().as_ptr(), unsafe {
            area.as_ptr().as_ptr().add(3 * 4096)
        });
        assert!(area.net_iov_at(10).is_none());
        assert!(area.net_iov(NetmemRef::net_iov(area.id(), 10)).is_none());
        assert!(area.net_iov(NetmemRef::page(area.id(), 1)).is_none());
        assert!(area
            .net_iov(NetmemRef::net_iov(area.id().wrapping_add(1), 1))
            .is_none());
        assert_eq!(
            area.netmem_at_offset(3 * 4096 + 17),
            Some((NetmemRef::net_iov(area.id(), 3), 17))
        );
        assert_eq!(area.netmem_at_offset(10 * 4096), None);
    }

    #[test]
    fn area_ids_are_unique_among_live_areas() {
        let areas: Vec<NetIovArea> = (0..8)
            .map(|_| NetIovArea::anonymous(4096, 4096).unwrap())
            .collect();
        let mut ids: Vec<u16> = areas.iter().map(NetIovArea::id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), areas.len());
    }

    #[test]
    fn bad_chunk_sizes_are_refused() {
        assert!(matches!(
            NetIovArea::anonymous(4096, 0),
            Err(NetIovError::ChunkSize { .. })
        ));
        assert!(matches!(
            NetIovArea::anonymous(4096, 8192),
            Err(NetIovError::ChunkSize { .. })
        ));
    }

    #[test]
    fn frags_round_trip_and_stay_in_their_chunk() {
        let area = NetIovArea::memfd(4 * 2048, 2048, false).unwrap();
        assert_eq!(area.backing(), AreaBacking::Memfd { hugetlb: false });
        assert!(area.memfd_fd().is_some());
        let mut list = FragList::new();
        let a = NetmemRef::net_iov(area.id(), 1);
        let b = NetmemRef::net_iov(area.id(), 3);
        area.push_frag(a, 100, 1000, &mut list).unwrap();
        area.push_frag(b, 0, 2048, &mut list).unwrap();
        assert!(matches!(
            area.push_frag(a, 1000, 1049, &mut list),
            Err(NetIovError::FragOutOfChunk { .. })
        ));
        assert!(matches!(
            area.push_frag(a, u32::MAX, 2, &mut list),
            Err(NetIovError::FragOutOfChunk { .. })
        ));
        assert!(matches!(
            area.push_frag(NetmemRef::page(0, 1), 0, 1, &mut list),
            Err(NetIovError::NotInArea { .. })
        ));
        assert_eq!(list.nr_frags(), 2);
        let src: Vec<u8> = (0..3048u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        assert_eq!(list.copy_from(&src), 3048);
        let mut back = vec![0u8; 3048];
        assert_eq!(list.copy_to(&mut back), 3048);
        assert_eq!(back, src);
        // The bytes landed where the frags say.
        let first = area.net_iov(a).unwrap().addr();
        // SAFETY: byte 100 of chunk 1 is inside the area, which is alive.
        assert_eq!(unsafe { *first.as_ptr().add(100) }, src[0]);
    }

    #[test]
    fn external_memory_area() {
        let mut buf = vec![0u8; 8192];
        let base = NonNull::new(buf.as_mut_ptr()).unwrap();
        // SAFETY: `buf` outlives `area` (dropped at the end of this scope after it) and
        // is only touched through the area meanwhile.
        let area = unsafe { NetIovArea::from_raw_parts(base, buf.len(), 4096) }.unwrap();
        assert_eq!(area.backing(), AreaBacking::External);
        assert_eq!(area.nr_chunks(), 2);
        let mut list = FragList::new();
        area.push_frag(NetmemRef::net_iov(area.id(), 1), 0, 4, &mut list)
            .unwrap();
        assert_eq!(list.copy_from(&[1, 2, 3, 4]), 4);
        drop(list);
        drop(area);
        assert_eq!(&buf[4096..4100], &[1, 2, 3, 4]);
    }
}
