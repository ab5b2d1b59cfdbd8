// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Split-ring descriptor chain walker with precise errors.
//!
//! `virtio-queue` manages the avail and used rings; this walker follows one chain from
//! its head through the descriptor table (and an indirect table), and tells exactly
//! what is wrong with a hostile chain (a loop, a chain longer than the queue, an
//! indirect table inside an indirect table, a descriptor table outside guest memory,
//! a buffer address that wraps) instead of silently ending the chain.

use smallvec::SmallVec;
use virtio_bindings::virtio_ring;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A `vring_desc.flags` bit of the bindings (which are `u32`) as the `u16` the
/// descriptor carries. Only used in the constants below, so the range check runs at
/// compile time: a bit that did not fit would not build.
#[allow(clippy::cast_possible_truncation)] // the range is asserted first
const fn desc_flag(flag: u32) -> u16 {
    assert!(flag <= u16::MAX as u32, "vring_desc.flags is 16 bits wide");
    flag as u16
}

const VRING_DESC_F_NEXT: u16 = desc_flag(virtio_ring::VRING_DESC_F_NEXT);
const VRING_DESC_F_WRITE: u16 = desc_flag(virtio_ring::VRING_DESC_F_WRITE);
const VRING_DESC_F_INDIRECT: u16 = desc_flag(virtio_ring::VRING_DESC_F_INDIRECT);
const DESC_SIZE: u64 = 16;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (RX buffer) rather than device-readable.
    pub write: bool,
}

/// Where descriptors are read from: guest memory through vm-memory, or the netmem
/// page map's direct path.
pub trait DescMemory {
    /// The 16 bytes of the descriptor at `addr`, None when outside guest memory.
    fn read_desc(&self, addr: u64) -> Option<[u8; 16]>;
}

impl DescMemory for GuestMemoryMmap {
    fn read_desc(&self, addr: u64) -> Option<[u8; 16]> {
        self.read_obj(GuestAddress(addr)).ok()
    }
}

impl DescMemory for crate::netmem::GuestPageMap {
    #[inline]
    fn read_desc(&self, addr: u64) -> Option<[u8; 16]> {
        self.read_array::<16>(addr)
    }
}

/// Segments of one chain (most chains have one or two).
pub type Segments = SmallVec<[Segment; 8]>;

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor index beyond the table.
    #[error("descriptor index {0} beyond the table")]
    IndexOutOfRange(u16),
    /// The descriptor table (or an indirect table) is not in guest memory.
    #[error("descriptor table at {0:#x} is outside guest memory")]
    TableOutsideMemory(u64),
    /// More descriptors than the queue size: a loop or an over-long chain.
    #[error("chain longer than {0} descriptors (loop or over-long chain)")]
    TooLong(usize),
    /// An indirect descriptor inside an indirect table, with NEXT, or not negotiated.
    #[error("invalid indirect descriptor")]
    BadIndirect,
    /// A buffer whose address plus length wraps around.
    #[error("buffer {gpa:#x}+{len:#x} wraps around the address space")]
    Wraps {
        /// Start.
        gpa: u64,
        /// Length.
        len: u32,
    },
    /// A zero-length buffer.
    #[error("zero-length buffer")]
    ZeroLength,
}

/// Walks chains of one queue.
#[derive(Debug, Clone, Copy)]
pub struct ChainWalker {
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Queue size (entries in the table; also the longest legal chain).
    pub queue_size: u16,
    /// Whether RING_INDIRECT_DESC was negotiated.
    pub indirect: bool,
}

impl ChainWalker {
    #[inline]
    fn read_desc(
        mem: &impl DescMemory,
        table: u64,
        index: u16,
    ) -> Result<(u64, u32, u16, u16), ChainError> {
        let addr = table
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(ChainError::TableOutsideMemory(table))?;
        let raw = mem
            .read_desc(addr)
            .ok_or(ChainError::TableOutsideMemory(table))?;
        let gpa = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        Ok((gpa, len, flags, next))
    }

    /// Collect the segments of the chain starting at `head` into `out` (cleared first).
    /// Returns the descriptors the chain takes in the ring's own table (an indirect
    /// table's entries are not counted: its descriptor is).
    pub fn walk(
        &self,
        mem: &impl DescMemory,
        head: u16,
        out: &mut Segments,
    ) -> Result<u16, ChainError> {
        out.clear();
        let limit = usize::from(self.queue_size);
        let mut table = self.desc_table;
        let mut table_len = self.queue_size;
        let mut index = head;
        let mut in_indirect = false;
        let mut seen = 0usize;
        let mut slots = 0u16;
        loop {
            if index >= table_len {
                return Err(ChainError::IndexOutOfRange(index));
            }
            seen += 1;
            if seen > limit {
                return Err(ChainError::TooLong(limit));
            }
            let (gpa, len, flags, next) = Self::read_desc(mem, table, index)?;
            if !in_indirect {
                // At most the queue size (`seen` is bounded by it), so no overflow.
                slots = slots.saturating_add(1);
            }
            if flags & VRING_DESC_F_INDIRECT != 0 {
                if !self.indirect
                    || in_indirect
                    || flags & VRING_DESC_F_NEXT != 0
                    || len == 0
                    || len % 16 != 0
                {
                    return Err(ChainError::BadIndirect);
                }
                let entries = u16::try_from(len / 16).map_err(|_| ChainError::BadIndirect)?;
                if gpa.checked_add(u64::from(len)).is_none() {
                    return Err(ChainError::Wraps { gpa, len });
                }
                table = gpa;
                table_len = entries;
                index = 0;
                in_indirect = true;
                // The indirect descriptor itself is not a buffer.
                seen -= 1;
                continue;
            }
            if len == 0 {
                return Err(ChainError::ZeroLength);
            }
            if gpa.checked_add(u64::from(len)).is_none() {
                return Err(ChainError::Wraps { gpa, len });
            }
            out.push(Segment {
                gpa,
                len,
                write: flags & VRING_DESC_F_WRITE != 0,
            });
            if flags & VRING_DESC_F_NEXT == 0 {
                return Ok(slots);
            }
            index = next;
        }
    }
}

/// The descriptor checks both ring layouts share; the packed ring
/// (`datapath::ring::packed`) checks its descriptors with these, the split ring's
/// [`ChainWalker::walk`] applies the same rules inline.
impl ChainWalker {
    /// A buffer descriptor as a segment: a zero length or an address plus length that
    /// wraps is refused.
    pub fn segment(gpa: u64, len: u32, write: bool) -> Result<Segment, ChainError> {
        if len == 0 {
            return Err(ChainError::ZeroLength);
        }
        if gpa.checked_add(u64::from(len)).is_none() {
            return Err(ChainError::Wraps { gpa, len });
        }
        Ok(Segment { gpa, len, write })
    }

    /// The table an indirect descriptor names, as (address, entries): refused when
    /// RING_INDIRECT_DESC was not negotiated, when the descriptor also has NEXT, when
    /// its length is not a non-zero multiple of 16, when the table has more entries
    /// than the queue size (the longest legal chain) or wraps the address space.
    pub fn indirect_table(&self, gpa: u64, len: u32, next: bool) -> Result<(u64, u16), ChainError> {
        if !self.indirect || next || len == 0 || len % 16 != 0 {
            return Err(ChainError::BadIndirect);
        }
        let entries = u16::try_from(len / 16).map_err(|_| ChainError::BadIndirect)?;
        if entries > self.queue_size {
            return Err(ChainError::TooLong(usize::from(self.queue_size)));
        }
        if gpa.checked_add(u64::from(len)).is_none() {
            return Err(ChainError::Wraps { gpa, len });
        }
        Ok((gpa, entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: u64 = 0x1000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put(m: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        m.write_obj(raw, GuestAddress(table + u64::from(i) * 16))
            .unwrap();
    }

    fn walker() -> ChainWalker {
        ChainWalker {
            desc_table: TABLE,
            queue_size: 16,
            indirect: true,
        }
    }

    fn walk(m: &GuestMemoryMmap, head: u16) -> Result<Segments, ChainError> {
        let mut out = Segments::new();
        walker().walk(m, head, &mut out).map(|_| out)
    }

    #[test]
    fn direct_chain() {
        let m = mem();
        put(&m, TABLE, 0, 0x8000, 12, VRING_DESC_F_NEXT, 3);
        put(&m, TABLE, 3, 0x9000, 100, VRING_DESC_F_WRITE, 0);
        let s = walk(&m, 0).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[1].gpa, s[1].len, s[1].write), (0x9000, 100, true));
        let mut out = Segments::new();
        assert_eq!(walker().walk(&m, 0, &mut out), Ok(2), "two table entries");
    }

    #[test]
    fn indirect_chain() {
        let m = mem();
        put(&m, TABLE, 0, 0x4000, 32, VRING_DESC_F_INDIRECT, 0);
        put(&m, 0x4000, 0, 0x8000, 10, VRING_DESC_F_NEXT, 1);
        put(&m, 0x4000, 1, 0x9000, 20, 0, 0);
        assert_eq!(walk(&m, 0).unwrap().len(), 2);
        let mut out = Segments::new();
        assert_eq!(walker().walk(&m, 0, &mut out), Ok(1), "one table entry");
        let no_indirect = ChainWalker {
            indirect: false,
            ..walker()
        };
        let mut out = Segments::new();
        assert_eq!(
            no_indirect.walk(&m, 0, &mut out),
            Err(ChainError::BadIndirect)
        );
    }

    #[test]
    fn hostile_chains_are_named() {
        let m = mem();
        // A loop.
        put(&m, TABLE, 0, 0x8000, 10, VRING_DESC_F_NEXT, 1);
        put(&m, TABLE, 1, 0x8000, 10, VRING_DESC_F_NEXT, 0);
        assert_eq!(walk(&m, 0), Err(ChainError::TooLong(16)));
        // A next index beyond the table.
        put(&m, TABLE, 2, 0x8000, 10, VRING_DESC_F_NEXT, 99);
        assert_eq!(walk(&m, 2), Err(ChainError::IndexOutOfRange(99)));
        assert_eq!(walk(&m, 16), Err(ChainError::IndexOutOfRange(16)));
        // Wrapping and zero-length buffers.
        put(&m, TABLE, 3, u64::MAX - 4, 10, 0, 0);
        assert_eq!(
            walk(&m, 3),
            Err(ChainError::Wraps {
                gpa: u64::MAX - 4,
                len: 10
            })
        );
        put(&m, TABLE, 4, 0x8000, 0, 0, 0);
        assert_eq!(walk(&m, 4), Err(ChainError::ZeroLength));
        // Indirect inside indirect, and an indirect table outside memory.
        put(&m, TABLE, 5, 0x4000, 16, VRING_DESC_F_INDIRECT, 0);
        put(&m, 0x4000, 0, 0x5000, 16, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(walk(&m, 5), Err(ChainError::BadIndirect));
        put(&m, TABLE, 6, 0x1000_0000, 16, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(
            walk(&m, 6),
            Err(ChainError::TableOutsideMemory(0x1000_0000))
        );
    }

    #[test]
    fn the_shared_descriptor_checks() {
        assert_eq!(
            ChainWalker::segment(0x1000, 8, true),
            Ok(Segment {
                gpa: 0x1000,
                len: 8,
                write: true
            })
        );
        assert_eq!(
            ChainWalker::segment(0x1000, 0, false),
            Err(ChainError::ZeroLength)
        );
        assert_eq!(
            ChainWalker::segment(u64::MAX - 3, 8, false),
            Err(ChainError::Wraps {
                gpa: u64::MAX - 3,
                len: 8
            })
        );
        let w = walker();
        assert_eq!(w.indirect_table(0x4000, 32, false), Ok((0x4000, 2)));
        assert_eq!(w.indirect_table(0x4000, 256, false), Ok((0x4000, 16)));
        assert_eq!(
            w.indirect_table(0x4000, 272, false),
            Err(ChainError::TooLong(16))
        );
        for (len, next) in [(0, false), (24, false), (32, true)] {
            assert_eq!(
                w.indirect_table(0x4000, len, next),
                Err(ChainError::BadIndirect),
                "{len} {next}"
            );
        }
        assert_eq!(
            w.indirect_table(u64::MAX - 15, 32, false),
            Err(ChainError::Wraps {
                gpa: u64::MAX - 15,
                len: 32
            })
        );
        let off = ChainWalker {
            indirect: false,
            ..w
        };
        assert_eq!(
            off.indirect_table(0x4000, 32, false),
            Err(ChainError::BadIndirect)
        );
    }

    #[test]
    fn table_outside_memory() {
        let m = mem();
        let w = ChainWalker {
            desc_table: 0x2000_0000,
            ..walker()
        };
        let mut out = Segments::new();
        assert_eq!(
            w.walk(&m, 0, &mut out),
            Err(ChainError::TableOutsideMemory(0x2000_0000))
        );
    }
}
