// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Synthetic guest memory for the data-path targets.
//!
//! The crate's `GuestPageMap` is only built by `SharedPageMap` from memfd-backed
//! regions (as its unit tests do), so each layout is one memfd mapped once per process;
//! every fuzz input zeroes it and writes its sparse memory image into it.
//! Three layouts, chosen by the input: one region; two adjacent regions of one memfd at
//! swapped file offsets (QEMU sends regions of one memfd at different offsets); two
//! regions with a hole between them.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, OnceLock};

use vhost_netmem::netmem::{GuestPageMap, RegionSpec, SharedPageMap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// A region: (guest-physical address, size, offset in the memfd).
pub type Region = (u64, u64, u64);

/// The layouts, indexed by the input's layout byte (modulo their number).
pub const LAYOUTS: [&[Region]; 3] = [
    &[(0, 0x1_0000, 0)],
    &[(0, 0x8000, 0x1_0000), (0x8000, 0x8000, 0)],
    &[(0, 0x8000, 0), (0xc000, 0x8000, 0x8000)],
];

/// A memfd of `size` bytes (sparse: nothing is committed until touched).
pub fn memfd(size: u64) -> File {
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vnm-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("size the memfd");
    f
}

/// One layout, mapped.
pub struct GuestMem {
    shared: SharedPageMap,
    regions: &'static [Region],
}

impl GuestMem {
    fn new(regions: &'static [Region]) -> Self {
        let file_size = regions.iter().map(|r| r.2 + r.1).max().unwrap_or(0);
        let f = memfd(file_size);
        let shared = SharedPageMap::new();
        let specs = regions
            .iter()
            .map(|&(gpa, size, offset)| RegionSpec {
                gpa,
                size,
                file: f.try_clone().expect("dup memfd"),
                offset,
                // Frontend addresses are not used by the data path.
                user_addr: 0x7f00_0000_0000 + gpa,
            })
            .collect();
        shared.set_table(specs).expect("map the fuzz guest memory");
        GuestMem { shared, regions }
    }

    /// The regions of this layout.
    pub fn regions(&self) -> &'static [Region] {
        self.regions
    }

    /// Zero the memory, apply the sparse image `patches` ([`crate::patch`]; offsets
    /// are guest-physical, bytes outside the regions are dropped) and return the
    /// snapshot.
    pub fn load(&self, patches: &[u8]) -> Arc<GuestPageMap> {
        let map = self.shared.load();
        for &(gpa, size, _) in self.regions {
            let size = usize::try_from(size).expect("small region");
            let host = map
                .mem()
                .get_host_address(GuestAddress(gpa))
                .expect("region start is mapped");
            // SAFETY: `host` is the start of this region's mapping, which is `size`
            // bytes long and kept alive by `map`; nothing else runs on it now (the
            // previous input's paths are done), and one memset is much cheaper than
            // vm-memory's volatile copy of a zero buffer.
            unsafe { std::ptr::write_bytes(host, 0, size) };
        }
        crate::patch::apply(patches, |at, bytes| {
            for &(gpa, size, _) in self.regions {
                let (start, end) = (at.max(gpa), (at + bytes.len() as u64).min(gpa + size));
                if start < end {
                    let part = &bytes[(start - at) as usize..(end - at) as usize];
                    map.mem()
                        .write_slice(part, GuestAddress(start))
                        .expect("write inside the region");
                }
            }
        });
        map
    }

    /// Whether every byte of `gpa..gpa + len` is in some region (adjacent regions
    /// count as one range).
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let mut at = gpa;
        while at < end {
            match self.regions.iter().find(|r| r.0 <= at && at < r.0 + r.1) {
                Some(r) => at = r.0 + r.1,
                None => return false,
            }
        }
        true
    }

    /// Whether `gpa..gpa + len` lies inside a single region.
    pub fn in_one_region(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len)
            .is_some_and(|end| self.regions.iter().any(|r| r.0 <= gpa && end <= r.0 + r.1))
    }
}

/// Layout number `n % 3`, mapped on first use.
pub fn layout(n: u8) -> &'static GuestMem {
    static MEMS: OnceLock<Vec<GuestMem>> = OnceLock::new();
    let mems = MEMS.get_or_init(|| LAYOUTS.iter().map(|l| GuestMem::new(l)).collect());
    &mems[usize::from(n) % mems.len()]
}
