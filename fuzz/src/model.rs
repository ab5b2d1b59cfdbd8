// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A reference model of one split virtqueue, written from the virtio spec's rules
//! (and the crate's documented choices) rather than from the crate's code, so that the
//! targets can compare what the data path did with what it should have done.
//!
//! The model reads guest memory before the code under test runs. Its predictions hold
//! only while nothing it read is rewritten during the run, so every read is recorded
//! as a range, and a target checks its exact predictions only when no range the
//! backend may write (the used ring, RX buffers) overlaps a range the model read.

use vhost_netmem::netmem::GuestPageMap;
use vhost_netmem::virtio::{ChainError, Segment};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Ranges of guest-physical memory (start, length).
#[derive(Debug, Default, Clone)]
pub struct Ranges(pub Vec<(u64, u64)>);

impl Ranges {
    /// Record `gpa..gpa + len`.
    pub fn add(&mut self, gpa: u64, len: u64) {
        self.0.push((gpa, len));
    }

    /// Whether any range of `self` overlaps any of `other`.
    pub fn overlaps(&self, other: &Ranges) -> bool {
        let end = |s: u64, l: u64| s.saturating_add(l);
        self.0.iter().any(|&(a, al)| {
            other
                .0
                .iter()
                .any(|&(b, bl)| a < end(b, bl) && b < end(a, al) && al > 0 && bl > 0)
        })
    }
}

/// Where a ring lives and what was negotiated for it.
#[derive(Debug, Clone, Copy)]
pub struct RingGeom {
    /// Queue size (a power of two).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// RING_INDIRECT_DESC.
    pub indirect: bool,
}

impl RingGeom {
    /// The used ring with its trailing `avail_event` (what the device writes).
    pub fn used_range(&self) -> (u64, u64) {
        (self.used, 4 + 8 * u64::from(self.size) + 2)
    }
}

/// What the model knows about the avail side before the run.
#[derive(Debug, Clone)]
pub struct AvailModel {
    /// The avail index cannot be read or is more than a ring ahead, or the ring's
    /// entries are not all in guest memory: the ring breaks on its first look.
    pub broken: bool,
    /// Heads in the order the device pops them, up to the first entry that cannot be
    /// read (which stops the device there).
    pub heads: Vec<u16>,
}

/// Read the avail side of `ring` from `next_avail` on.
pub fn avail_model(
    mem: &GuestMem,
    map: &GuestPageMap,
    ring: &RingGeom,
    next_avail: u16,
    reads: &mut Ranges,
) -> AvailModel {
    let size = u64::from(ring.size);
    // flags, idx, the entries and used_event: all read by the device at some point.
    reads.add(ring.avail, 4 + 2 * size + 2);
    let idx_at = ring.avail + 2;
    let idx = if mem.in_one_region(idx_at, 2) && idx_at % 2 == 0 {
        map.mem().read_obj::<u16>(GuestAddress(idx_at)).ok()
    } else {
        None
    };
    let Some(idx) = idx else {
        return AvailModel {
            broken: true,
            heads: Vec::new(),
        };
    };
    let pending = idx.wrapping_sub(next_avail);
    // The ring's entries must all be in guest memory (they may span adjacent regions).
    if pending > ring.size || !mem.contains(ring.avail + 4, 2 * size) {
        return AvailModel {
            broken: true,
            heads: Vec::new(),
        };
    }
    let mut heads = Vec::new();
    for k in 0..pending {
        let slot = next_avail.wrapping_add(k) & (ring.size - 1);
        let at = ring.avail + 4 + 2 * u64::from(slot);
        if !mem.in_one_region(at, 2) {
            break;
        }
        match map.mem().read_obj::<u16>(GuestAddress(at)) {
            Ok(h) => heads.push(h),
            Err(_) => break,
        }
    }
    AvailModel {
        broken: false,
        heads,
    }
}

/// The chain starting at `head`, by the spec's rules: at most `size` buffers
/// (descriptors that point at an indirect table do not count), indices within their
/// table, one level of indirection and only when negotiated, an indirect descriptor
/// without NEXT and with a length that is a non-zero multiple of 16 (at most 65535
/// entries), no zero-length buffer and no address range that wraps. A descriptor is
/// read whole from one region of guest memory.
pub fn walk(
    mem: &GuestMem,
    map: &GuestPageMap,
    ring: &RingGeom,
    head: u16,
    reads: &mut Ranges,
) -> Result<Vec<Segment>, ChainError> {
    let limit = usize::from(ring.size);
    let mut segs = Vec::new();
    let (mut table, mut entries, mut index) = (ring.desc, ring.size, head);
    let mut nested = false;
    loop {
        if index >= entries {
            return Err(ChainError::IndexOutOfRange(index));
        }
        if segs.len() >= limit {
            return Err(ChainError::TooLong(limit));
        }
        let at = table
            .checked_add(16 * u64::from(index))
            .filter(|&a| mem.in_one_region(a, 16))
            .ok_or(ChainError::TableOutsideMemory(table))?;
        reads.add(at, 16);
        let raw: [u8; 16] = map
            .mem()
            .read_obj(GuestAddress(at))
            .map_err(|_| ChainError::TableOutsideMemory(table))?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & F_INDIRECT != 0 {
            let n = len / 16;
            if !ring.indirect
                || nested
                || flags & F_NEXT != 0
                || len == 0
                || len % 16 != 0
                || n > u32::from(u16::MAX)
            {
                return Err(ChainError::BadIndirect);
            }
            if addr.checked_add(u64::from(len)).is_none() {
                return Err(ChainError::Wraps { gpa: addr, len });
            }
            table = addr;
            entries = u16::try_from(n).expect("checked above");
            index = 0;
            nested = true;
            continue;
        }
        if len == 0 {
            return Err(ChainError::ZeroLength);
        }
        if addr.checked_add(u64::from(len)).is_none() {
            return Err(ChainError::Wraps { gpa: addr, len });
        }
        segs.push(Segment {
            gpa: addr,
            len,
            write: flags & F_WRITE != 0,
        });
        if flags & F_NEXT == 0 {
            return Ok(segs);
        }
        index = next;
    }
}

/// The used entries the device wrote from `from` up to (not including) `to`, read
/// back from guest memory: (id, len).
pub fn used_entries(map: &GuestPageMap, ring: &RingGeom, from: u16, to: u16) -> Vec<(u32, u32)> {
    let n = to.wrapping_sub(from);
    (0..n)
        .map(|k| {
            let slot = from.wrapping_add(k) & (ring.size - 1);
            let at = ring.used + 4 + 8 * u64::from(slot);
            let e: [u8; 8] = map.mem().read_obj(GuestAddress(at)).unwrap_or([0xff; 8]);
            (
                u32::from_le_bytes(e[0..4].try_into().expect("4 bytes")),
                u32::from_le_bytes(e[4..8].try_into().expect("4 bytes")),
            )
        })
        .collect()
}

/// Sorted copy, for comparing multisets.
pub fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}
