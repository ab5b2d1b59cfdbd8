// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Zero-copy TX from guest memory (`--xdp-zerocopy-tx`): the guest's memory regions
//! registered as a second UMEM, and guest packets sent straight from their pages.
//!
//! DOC: layout. The regions of one guest memory snapshot are mapped a second time from
//! their files (the memfds the frontend sent, at their `mmap_offset`), back to back
//! in one reserved range, each at a multiple of its file's page size (huge pages for a
//! hugetlbfs memfd); that range is registered as a UMEM in unaligned-chunk mode
//! (`XDP_UMEM_UNALIGNED_CHUNK_FLAG`), so a descriptor may start at any byte. Guest
//! page `i` of the region in slot `s` is at UMEM address `base(s) + i * 4096`. The
//! kernel pins the whole range while the UMEM is registered.
//!
//! DOC: socket. The kernel allows one UMEM per interface queue, and the pair's own
//! queue already has the frame UMEM, so this UMEM gets a TX-only socket of its own,
//! bound to another queue of the same interface (the uplink picks `pairs + pair`). It
//! is bound with `XDP_USE_SG` where the kernel has multi-buffer AF_XDP: a packet of
//! several frags then goes out as several descriptors chained with
//! `XDP_PKT_CONTD`; without it, only single-frag packets go zero-copy.
//!
//! DOC: page holds. Every guest page a packet's descriptors touch holds a
//! `pp_ref_count` ([`RegionPages::get_page`]) from the send until the completion ring
//! has returned all of the packet's descriptors; a region's removal waits for them.
//! Completions are matched to packets by count in send order (a single TX ring
//! completes in order; a completion naming another address is counted). The caller
//! keeps the guest's chains until then, so the guest cannot rewrite a buffer the
//! device still reads. Dropping a [`GuestUmem`] closes the socket first (the kernel
//! stops reading), then releases every hold, then unmaps the range.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::ptr::NonNull;
use std::sync::{Arc, Weak};

use smallvec::SmallVec;
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, RingTx, SocketConfig, Umem, UmemConfig};

use super::socket::{bind_retrying, errno, queue_socket, BindMode};
use super::XdpError;
use crate::netmem::{FragList, GuestPageMap, RegionPages, PAGE_SIZE};

/// `XDP_UMEM_UNALIGNED_CHUNK_FLAG` (linux/if_xdp.h).
const XDP_UMEM_UNALIGNED_CHUNK_FLAG: u32 = 1 << 0;
/// `XDP_USE_SG` bind flag (linux/if_xdp.h, multi-buffer AF_XDP).
const XDP_USE_SG: u16 = 1 << 4;
/// `XDP_PKT_CONTD` descriptor option: the packet goes on in the next descriptor.
const XDP_PKT_CONTD: u32 = 1 << 0;
/// Chunk size of the guest UMEM: the largest descriptor (unaligned chunks may start
/// anywhere, but no descriptor may be longer).
const CHUNK_SIZE: u32 = 4096;
/// TX ring entries; the completion ring has as many, so it can never overflow.
const TX_RING: u32 = 2048;
/// The fill ring is required but never used (the socket does not receive).
const FILL_RING: u32 = 64;
/// Most descriptors of one packet (the kernel takes up to `MAX_SKB_FRAGS + 1`).
pub(crate) const MAX_DESCS: usize = 17;

/// A hold on pages `first..=last` of a guest region (their `pp_ref_count`), released
/// when dropped.
struct PageHold {
    pages: Arc<RegionPages>,
    first: u64,
    last: u64,
}

impl PageHold {
    /// Hold pages `first..=last`; None (nothing held) if any is outside the region.
    fn take(pages: Arc<RegionPages>, first: u64, last: u64) -> Option<Self> {
        for i in first..=last {
            if !pages.get_page(i) {
                for j in first..i {
                    pages.put_page(j);
                }
                return None;
            }
        }
        Some(PageHold { pages, first, last })
    }
}

impl Drop for PageHold {
    fn drop(&mut self) {
        for i in self.first..=self.last {
            self.pages.put_page(i);
        }
    }
}

/// One packet on the TX or completion ring.
struct InFlight {
    /// Its descriptors not completed yet.
    remaining: u32,
    /// Whether any of its descriptors completed yet.
    started: bool,
    /// Address of its first descriptor (to check the completion order).
    first_addr: u64,
    _holds: SmallVec<[PageHold; 2]>,
}

/// One registered region: where its pages start in the UMEM.
struct UmemRegion {
    slot: u16,
    base: u64,
    size: u64,
    /// Not a strong reference: a region that leaves the memory map must not wait for
    /// the UMEM, only for the pages held by packets in flight.
    pages: Weak<RegionPages>,
}

/// The second mapping of the guest's regions, registered as the UMEM.
struct AliasMapping {
    /// The whole reservation (with the alignment slack), unmapped on drop.
    reserved: NonNull<u8>,
    reserved_len: usize,
    /// The aligned start of the UMEM inside it.
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; no Rust reference into it
// is ever created (the kernel reads it through its own pins), so moving the owner
// between threads cannot create aliasing.
unsafe impl Send for AliasMapping {}

/// Where one region goes in the alias mapping.
struct Placement<'a> {
    file: &'a std::fs::File,
    offset: u64,
    len: usize,
    at: usize,
}

impl AliasMapping {
    /// Map every placement at its offset in one reservation of `len` bytes aligned to
    /// `align`.
    fn new(placements: &[Placement<'_>], len: usize, align: usize) -> io::Result<Self> {
        let reserved_len = len
            .checked_add(align)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: a fresh anonymous private mapping at an address the kernel chooses (no
        // MAP_FIXED): it cannot overlap any existing object. The result is checked.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let reserved =
            NonNull::new(raw.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        let skew = reserved.as_ptr().align_offset(align);
        // `skew < align`, so `base + len` stays inside the reservation.
        // SAFETY: `skew <= align` and the reservation is `len + align` bytes long.
        let base = unsafe { NonNull::new_unchecked(reserved.as_ptr().add(skew)) };
        let mapping = AliasMapping {
            reserved,
            reserved_len,
            base,
            len,
        };
        for p in placements {
            let file_offset = libc::off_t::try_from(p.offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            if p.at.checked_add(p.len).map_or(true, |end| end > len) {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            // SAFETY: `base + at .. base + at + len` lies inside the reservation made
            // above (checked just now), which this function owns and nothing else
            // uses, so replacing it with MAP_FIXED cannot clobber another mapping. The
            // file descriptor is borrowed from a live `File` for the call. The result
            // is checked.
            let got = unsafe {
                libc::mmap(
                    mapping.base.as_ptr().add(p.at).cast(),
                    p.len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    p.file.as_raw_fd(),
                    file_offset,
                )
            };
            if got == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(mapping)
    }

    fn as_raw(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.len)
    }
}

impl Drop for AliasMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the reservation `new` created (the region mappings replaced
        // parts of it and go with it); no pointer into it outlives `self`, and the
        // socket that registered it was closed before (field order of `GuestUmem`).
        unsafe { libc::munmap(self.reserved.as_ptr().cast(), self.reserved_len) };
    }
}

/// The guest's memory as a UMEM with its TX-only socket.
pub(crate) struct GuestUmem {
    // Field order is drop order: the socket closes first, then the holds of packets in
    // flight are released, then the mapping goes.
    tx: RingTx,
    fq_cq: DeviceQueue,
    in_flight: VecDeque<InFlight>,
    regions: Vec<UmemRegion>,
    /// Descriptors on the TX or completion ring.
    descs_out: u32,
    /// Packets completed since the last [`Self::take_completed`].
    completed: usize,
    /// Whether packets may take several descriptors (`XDP_USE_SG`).
    multi_buffer: bool,
    /// Split descriptors at page boundaries (zero-copy drivers DMA page by page).
    split_pages: bool,
    _mapping: AliasMapping,
}

/// Why a packet did not go zero-copy (it is copied instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZcRefused {
    /// A frag outside the registered memory (or a region removed since).
    NotRegistered,
    /// More descriptors than the socket takes for one packet.
    TooManyPieces,
    /// The TX ring (or the completion budget) has no room.
    RingFull,
}

/// What one reap of the completion ring found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// Packets whose descriptors all completed.
    pub packets: u64,
    /// Completions that did not name the next expected packet's first descriptor.
    pub out_of_order: u64,
}

fn page_size_of(file: &std::fs::File) -> usize {
    // hugetlbfs reports its huge page size as the block size; tmpfs (memfd) 4 KiB.
    file.metadata()
        .ok()
        .and_then(|m| usize::try_from(m.blksize()).ok())
        .filter(|b| b.is_power_of_two())
        .unwrap_or(4096)
        .max(4096)
}

impl GuestUmem {
    /// Register the regions of `map` and bind a TX-only socket to `iface` queue
    /// `queue` in `mode`, with multi-buffer where the kernel has it.
    pub(crate) fn build(
        map: &GuestPageMap,
        iface: &CStr,
        queue: u32,
        mode: BindMode,
    ) -> Result<Self, XdpError> {
        let err = |source: io::Error| XdpError::GuestUmem { queue, source };
        let mut placements = Vec::new();
        let mut regions = Vec::new();
        let mut at = 0usize;
        let mut align = 4096usize;
        for r in map.regions() {
            let (file, offset) = r.file_offset().ok_or_else(|| {
                err(io::Error::other(
                    "a guest region has no backing file to map a second time",
                ))
            })?;
            let page = page_size_of(file);
            align = align.max(page);
            let size = r.pages().size();
            let len = usize::try_from(size)
                .ok()
                .and_then(|s| s.checked_next_multiple_of(page))
                .ok_or_else(|| err(io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
            at = at
                .checked_next_multiple_of(page)
                .ok_or_else(|| err(io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
            placements.push(Placement {
                file,
                offset,
                len,
                at,
            });
            regions.push(UmemRegion {
                slot: r.pages().slot(),
                base: u64::try_from(at)
                    .map_err(|_| err(io::Error::from_raw_os_error(libc::EOVERFLOW)))?,
                size,
                pages: Arc::downgrade(r.pages()),
            });
            at = at
                .checked_add(len)
                .ok_or_else(|| err(io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        }
        if regions.is_empty() {
            return Err(err(io::Error::other("no guest memory")));
        }
        let mapping = AliasMapping::new(&placements, at, align).map_err(err)?;
        match Self::open(iface, queue, mode, &mapping, true) {
            Ok((tx, fq_cq)) => Ok(Self::assemble(tx, fq_cq, regions, true, mode, mapping)),
            Err(XdpError::Bind { .. }) => {
                // No multi-buffer AF_XDP in this kernel (or driver): single frags only.
                let (tx, fq_cq) = Self::open(iface, queue, mode, &mapping, false)?;
                Ok(Self::assemble(tx, fq_cq, regions, false, mode, mapping))
            }
            Err(e) => Err(e),
        }
    }

    fn assemble(
        tx: RingTx,
        fq_cq: DeviceQueue,
        regions: Vec<UmemRegion>,
        multi_buffer: bool,
        mode: BindMode,
        mapping: AliasMapping,
    ) -> Self {
        GuestUmem {
            tx,
            fq_cq,
            in_flight: VecDeque::new(),
            regions,
            descs_out: 0,
            completed: 0,
            multi_buffer,
            split_pages: mode == BindMode::ZeroCopy,
            _mapping: mapping,
        }
    }

    fn open(
        iface: &CStr,
        queue: u32,
        mode: BindMode,
        mapping: &AliasMapping,
        multi_buffer: bool,
    ) -> Result<(RingTx, DeviceQueue), XdpError> {
        let sock_err = |source| XdpError::Socket { queue, source };
        let config = UmemConfig {
            fill_size: FILL_RING,
            complete_size: TX_RING,
            frame_size: CHUNK_SIZE,
            headroom: 0,
            flags: XDP_UMEM_UNALIGNED_CHUNK_FLAG,
        };
        // SAFETY: `mapping.as_raw()` is a page-aligned range (the aligned start of an
        // mmap reservation) of exactly the slice length, fully mapped read-write; the
        // `GuestUmem` built from it owns the mapping and declares it after the rings
        // created here, so it stays mapped longer than every ring and the socket.
        let umem =
            unsafe { Umem::new(config, mapping.as_raw()) }.map_err(|e| XdpError::GuestUmem {
                queue,
                source: errno(e),
            })?;
        let (sock, fq_cq) = queue_socket(iface, queue, &umem)?;
        let mut bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP
            | match mode {
                BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
                BindMode::Copy => SocketConfig::XDP_BIND_COPY,
            };
        if multi_buffer {
            bind_flags |= XDP_USE_SG;
        }
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: None,
                    tx_size: NonZeroU32::new(TX_RING),
                    bind_flags,
                },
            )
            .map_err(|e| sock_err(errno(e)))?;
        let tx = user.map_tx().map_err(|e| sock_err(errno(e)))?;
        bind_retrying(&umem, &user).map_err(|source| XdpError::Bind {
            iface: iface.to_string_lossy().into_owned(),
            queue,
            mode,
            source,
        })?;
        Ok((tx, fq_cq))
    }

    /// Whether packets may take several descriptors.
    pub(crate) fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The TX ring, for kicks.
    pub(crate) fn tx_ring(&mut self) -> &mut RingTx {
        &mut self.tx
    }

    fn region(&self, slot: u16) -> Option<&UmemRegion> {
        self.regions.iter().find(|r| r.slot == slot)
    }

    /// Put `pkt` on the TX ring as descriptors into guest memory, holding its pages
    /// until it completes.
    pub(crate) fn send(&mut self, pkt: &FragList<'_>) -> Result<(), ZcRefused> {
        let max = if self.multi_buffer { MAX_DESCS } else { 1 };
        let mut descs: SmallVec<[XdpDesc; 4]> = SmallVec::new();
        let mut holds: SmallVec<[PageHold; 2]> = SmallVec::new();
        for frag in pkt.frags() {
            if frag.netmem.is_net_iov() || frag.len == 0 {
                return Err(ZcRefused::NotRegistered);
            }
            let region = self
                .region(frag.netmem.owner())
                .ok_or(ZcRefused::NotRegistered)?;
            let start = frag
                .netmem
                .index()
                .checked_mul(PAGE_SIZE)
                .and_then(|o| o.checked_add(u64::from(frag.offset)))
                .ok_or(ZcRefused::NotRegistered)?;
            let end = start
                .checked_add(u64::from(frag.len))
                .filter(|&e| e <= region.size)
                .ok_or(ZcRefused::NotRegistered)?;
            let mut at = start;
            while at < end {
                let limit = if self.split_pages {
                    (at / PAGE_SIZE + 1) * PAGE_SIZE
                } else {
                    at + u64::from(CHUNK_SIZE)
                };
                let piece = end.min(limit) - at;
                if descs.len() == max {
                    return Err(ZcRefused::TooManyPieces);
                }
                descs.push(XdpDesc {
                    addr: region.base + at,
                    // piece <= CHUNK_SIZE (a u32) by construction of `limit`.
                    len: u32::try_from(piece).unwrap_or(CHUNK_SIZE),
                    options: XDP_PKT_CONTD,
                });
                at += piece;
            }
            let pages = region.pages.upgrade().ok_or(ZcRefused::NotRegistered)?;
            let hold = PageHold::take(pages, start / PAGE_SIZE, (end - 1) / PAGE_SIZE)
                .ok_or(ZcRefused::NotRegistered)?;
            holds.push(hold);
        }
        let Some(last) = descs.last_mut() else {
            return Err(ZcRefused::NotRegistered);
        };
        last.options = 0;
        let n = u32::try_from(descs.len()).unwrap_or(u32::MAX);
        if self.descs_out.saturating_add(n) > TX_RING {
            return Err(ZcRefused::RingFull);
        }
        let mut w = self.tx.transmit(n);
        if w.capacity() < n {
            // Dropping the reservation rolls it back; the holds are released.
            return Err(ZcRefused::RingFull);
        }
        let first_addr = descs[0].addr;
        let put = w.insert(descs.into_iter());
        w.commit();
        drop(w);
        debug_assert_eq!(put, n);
        self.descs_out += put;
        self.in_flight.push_back(InFlight {
            remaining: put,
            started: false,
            first_addr,
            _holds: holds,
        });
        Ok(())
    }

    /// Read the completion ring: packets whose descriptors all came back release their
    /// page holds and count as completed.
    pub(crate) fn reap(&mut self) -> Reaped {
        let mut r = Reaped::default();
        let mut done = self.fq_cq.complete(TX_RING);
        while let Some(addr) = done.read() {
            self.descs_out = self.descs_out.saturating_sub(1);
            let Some(front) = self.in_flight.front_mut() else {
                r.out_of_order += 1;
                continue;
            };
            if !front.started {
                front.started = true;
                if addr != front.first_addr {
                    r.out_of_order += 1;
                }
            }
            front.remaining -= 1;
            if front.remaining == 0 {
                // Dropping the entry releases its page holds.
                self.in_flight.pop_front();
                self.completed += 1;
                r.packets += 1;
            }
        }
        done.release();
        r
    }

    /// Packets completed since the last call, in send order.
    pub(crate) fn take_completed(&mut self) -> usize {
        std::mem::take(&mut self.completed)
    }

    /// Packets sent and not reported by [`Self::take_completed`] yet.
    pub(crate) fn unreported(&self) -> usize {
        self.in_flight.len() + self.completed
    }

    /// Packets on the rings (reported or not).
    pub(crate) fn packets_out(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_holds_are_released_on_drop_and_undone_on_failure() {
        let pages = Arc::new(RegionPages::new(1, 0, 8 * PAGE_SIZE, 0));
        let hold = PageHold::take(Arc::clone(&pages), 2, 4).unwrap();
        let again = PageHold::take(Arc::clone(&pages), 4, 4).unwrap();
        assert_eq!(pages.pinned_pages(), 3);
        assert_eq!(pages.desc(4).unwrap().ref_count(), 2);
        drop(hold);
        assert_eq!(pages.pinned_pages(), 1);
        drop(again);
        assert_eq!(pages.pinned_pages(), 0);
        // Page 8 is past the 8-page region: nothing stays held.
        assert!(PageHold::take(Arc::clone(&pages), 6, 8).is_none());
        assert_eq!(pages.pinned_pages(), 0);
    }

    #[test]
    fn alias_mapping_places_regions_back_to_back() {
        let make = |n: u8| {
            // SAFETY: memfd_create with a NUL-terminated name; checked below.
            let fd = unsafe { libc::memfd_create(c"vnm-alias-test".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: `fd` is fresh and owned only here.
            let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            f.set_len(3 * 4096).unwrap();
            std::os::unix::fs::FileExt::write_at(&f, &[n; 4096], 4096).unwrap();
            f
        };
        let (a, b) = (make(1), make(2));
        let placements = [
            Placement {
                file: &a,
                offset: 4096,
                len: 8192,
                at: 0,
            },
            Placement {
                file: &b,
                offset: 4096,
                len: 4096,
                at: 8192,
            },
        ];
        let m = AliasMapping::new(&placements, 12288, 4096).unwrap();
        let raw = m.as_raw();
        assert_eq!(raw.len(), 12288);
        assert_eq!(raw.cast::<u8>().as_ptr().align_offset(4096), 0);
        // SAFETY: the mapping is 12288 bytes long and alive; reads of shared file pages.
        let (x, y, z) = unsafe {
            let p = raw.cast::<u8>().as_ptr();
            (*p, *p.add(4096), *p.add(8192))
        };
        assert_eq!((x, y, z), (1, 0, 2));
        let bad = [Placement {
            file: &a,
            offset: 0,
            len: 8192,
            at: 8192,
        }];
        assert!(AliasMapping::new(&bad, 12288, 4096).is_err());
    }
}
