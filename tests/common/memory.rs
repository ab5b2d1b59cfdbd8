// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! memfd-backed guest memory laid out like QEMU's: regions of one memfd at different file
//! offsets, each with its own guest-physical base.

use std::cell::Cell;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::ring::RingMemory;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// Where a region lives in the guest-physical space and in the memfd.
#[derive(Clone, Copy, Debug)]
pub struct RegionLayout {
    /// Guest-physical base.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the memfd (`mmap_offset` on the wire).
    pub file_offset: u64,
}

/// The regions of the test guest. Region 0 holds the rings; region 1 is the second piece
/// of the same memfd at a non-zero `mmap_offset` (QEMU's "above 4G" RAM); region 2 is
/// kept for ADD_MEM_REG.
pub const REGIONS: [RegionLayout; 3] = [
    RegionLayout {
        gpa: 0,
        size: 8 * MIB,
        file_offset: 0,
    },
    RegionLayout {
        gpa: 0x1_0000_0000,
        size: 8 * MIB,
        file_offset: 8 * MIB,
    },
    RegionLayout {
        gpa: 0x2_0000_0000,
        size: 8 * MIB,
        file_offset: 16 * MIB,
    },
];

/// A guest-physical address in no region (the hole between region 0 and region 1).
pub const HOLE_GPA: u64 = 0x8000_0000;

/// Guest memory: one memfd, mapped here region by region; the same regions (or a subset)
/// are sent to the daemon.
pub struct TestMemory {
    /// The mapping in this process (the "VMM" view).
    pub mem: GuestMemoryMmap,
    /// Bump-allocator cursor per region (offset from the region base).
    next: Vec<Cell<u64>>,
    /// Keeps the memfd open for ADD_MEM_REG after the mappings were made.
    file: File,
}

/// A memfd called `name` of `size` bytes.
pub fn memfd(name: &str, size: u64) -> File {
    let name = CString::new(name).expect("memfd name has no NUL");
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the call
    // only creates a new descriptor, and its result is checked below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        panic!("memfd_create: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid, and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size).expect("size the memfd");
    file
}

impl TestMemory {
    /// Map every region of [`REGIONS`] from one memfd.
    pub fn new() -> Self {
        let total = REGIONS
            .iter()
            .map(|r| r.file_offset + r.size)
            .max()
            .unwrap_or(0);
        let file = memfd("vnm-test-guest", total);
        let ranges: Vec<(GuestAddress, usize, Option<FileOffset>)> = REGIONS
            .iter()
            .map(|r| {
                let f = file.try_clone().expect("dup the memfd");
                (
                    GuestAddress(r.gpa),
                    usize::try_from(r.size).expect("region size fits usize"),
                    Some(FileOffset::new(f, r.file_offset)),
                )
            })
            .collect();
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).expect("map guest memory");
        TestMemory {
            mem,
            next: REGIONS.iter().map(|_| Cell::new(0)).collect(),
            file,
        }
    }

    /// The vhost-user description of region `i` (fd, size, our address, mmap_offset).
    pub fn region_info(&self, i: usize) -> VhostUserMemoryRegionInfo {
        let region = self
            .mem
            .find_region(GuestAddress(REGIONS[i].gpa))
            .expect("region is mapped");
        assert_eq!(region.len(), REGIONS[i].size);
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).expect("file-backed");
        assert_eq!(info.mmap_offset, REGIONS[i].file_offset);
        info
    }

    /// Allocate `len` bytes aligned to `align` in region `region`; zeroed.
    pub fn alloc(&self, region: usize, len: u64, align: u64) -> GuestAddress {
        let cursor = &self.next[region];
        let start = cursor.get().next_multiple_of(align);
        let end = start + len;
        assert!(
            end <= REGIONS[region].size,
            "test guest memory region {region} exhausted ({end} > {} bytes)",
            REGIONS[region].size
        );
        cursor.set(end);
        let gpa = GuestAddress(REGIONS[region].gpa + start);
        self.zero(gpa, len);
        gpa
    }

    /// The memfd behind every region.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Zero `len` bytes at `gpa`.
    pub fn zero(&self, gpa: GuestAddress, len: u64) {
        let len = usize::try_from(len).expect("length fits usize");
        self.mem
            .write_slice(&vec![0u8; len], gpa)
            .expect("zero guest memory");
    }

    /// Our (the frontend's) virtual address of `gpa`: what SET_VRING_ADDR carries.
    pub fn host_addr(&self, gpa: GuestAddress) -> u64 {
        self.mem
            .get_host_address(gpa)
            .expect("address in guest memory") as u64
    }

    /// Write bytes at `gpa`.
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .expect("write guest memory");
    }

    /// Read `len` bytes at `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .expect("read guest memory");
        v
    }
}

impl RingMemory for TestMemory {
    fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    fn alloc(&self, region: usize, len: u64, align: u64) -> GuestAddress {
        TestMemory::alloc(self, region, len, align)
    }
}

impl Default for TestMemory {
    fn default() -> Self {
        Self::new()
    }
}
