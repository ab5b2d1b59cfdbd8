//! Split-ring descriptor chain walker with precise errors.
//!
//! `virtio-queue` manages the avail and used rings; this walker follows one chain from
//! its head through the descriptor table (and an indirect table), and tells exactly
//! what is wrong with a hostile chain (a loop, a chain longer than the queue, an
//! indirect table inside an indirect table, a descriptor table outside guest memory,
//! a buffer address that wraps) instead of silently ending the chain.

use smallvec::SmallVec;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;
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
    fn read_desc(
        mem: &GuestMemoryMmap,
        table: u64,
        index: u16,
    ) -> Result<(u64, u32, u16, u16), ChainError> {
        let addr = table
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(ChainError::TableOutsideMemory(table))?;
        let raw: [u8; 16] = mem
            .read_obj(GuestAddress(addr))
            .map_err(|_| ChainError::TableOutsideMemory(table))?;
        let gpa = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        Ok((gpa, len, flags, next))
    }

    /// Collect the segments of the chain starting at `head` into `out` (cleared first).
    pub fn walk(
        &self,
        mem: &GuestMemoryMmap,
        head: u16,
        out: &mut Segments,
    ) -> Result<(), ChainError> {
        out.clear();
        let limit = usize::from(self.queue_size);
        let mut table = self.desc_table;
        let mut table_len = self.queue_size;
        let mut index = head;
        let mut in_indirect = false;
        let mut seen = 0usize;
        loop {
            if index >= table_len {
                return Err(ChainError::IndexOutOfRange(index));
            }
            seen += 1;
            if seen > limit {
                return Err(ChainError::TooLong(limit));
            }
            let (gpa, len, flags, next) = Self::read_desc(mem, table, index)?;
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
                return Ok(());
            }
            index = next;
        }
    }
}
