// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! DOC: the migration dirty log
//!
//! While a guest migrates, the frontend copies its memory to the destination again and
//! again; it learns which pages the backend wrote since the last copy from a bitmap it
//! shares with the backend (`VHOST_USER_PROTOCOL_F_LOG_SHMFD`: SET_LOG_BASE hands over
//! a memfd, its size and an offset). Bit `n` of the bitmap stands for the 4 KiB page of
//! guest-physical address `n * 4096`; the bitmap is read and cleared by the frontend 64
//! bits at a time with atomic exchanges, so the backend sets bits with atomic ORs on the
//! same 64-bit words, after the write they stand for (release ordering).
//!
//! What the backend writes into guest memory, and so logs while `VHOST_F_LOG_ALL` is
//! acked: RX packet data and virtio-net headers (the RX path), used ring entries, the
//! used index and the used ring's flags and `avail_event` (the ring, through the
//! ring's log address when the frontend set `VHOST_VRING_F_LOG`). TX writes nothing
//! into guest memory but its used entries.
//!
//! The frontend's file is checked against `fstat` when it arrives, and the mapping is
//! registered with the SIGBUS handler ([`super::fault`]) like guest memory, so a
//! frontend that shrinks it later loses its connection, not the process. A write to a
//! page the bitmap does not cover (the frontend grew guest memory without handing over
//! a larger log) cannot be logged: it is counted ([`DirtyLog::missed`]) and reported when
//! the log is replaced.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super::fault::{self, FaultGuard};

/// Bytes of guest memory one bit of the log stands for.
pub const VHOST_LOG_PAGE: u64 = 4096;

/// Guest memory one 64-bit word of the log covers.
const WORD_COVERS: u64 = VHOST_LOG_PAGE * 64;

/// Errors of SET_LOG_BASE.
#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    /// The log is empty.
    #[error("dirty log of 0 bytes")]
    Empty,
    /// The offset does not start a 64-bit word.
    #[error("dirty log offset {0:#x} is not 8-byte aligned")]
    Misaligned(u64),
    /// The file could not be examined.
    #[error("cannot stat the dirty log's file: {0}")]
    Stat(#[source] io::Error),
    /// The log lies (partly) outside its file.
    #[error(
        "dirty log of {size} bytes at offset {offset:#x} lies outside its {file_len}-byte file"
    )]
    OutsideFile {
        /// Claimed size.
        size: u64,
        /// Claimed offset.
        offset: u64,
        /// The file's size.
        file_len: u64,
    },
    /// The log covers less guest memory than the memory table holds.
    #[error(
        "dirty log of {size} bytes covers guest memory up to {covers:#x}, but guest memory reaches {needs:#x}"
    )]
    TooSmall {
        /// Claimed size.
        size: u64,
        /// Guest-physical end the log covers.
        covers: u64,
        /// Guest-physical end of the memory table.
        needs: u64,
    },
    /// mmap failed.
    #[error("cannot map the dirty log: {0}")]
    Map(#[source] io::Error),
}

/// The frontend's dirty bitmap, mapped shared.
#[derive(Debug)]
pub struct DirtyLog {
    /// The mapping (from the page-aligned offset below the log's start).
    map: NonNull<libc::c_void>,
    map_len: usize,
    /// The log's first 64-bit word inside the mapping, and how many words it has.
    words: NonNull<AtomicU64>,
    nwords: usize,
    missed: AtomicU64,
    /// The mapping's entry in the SIGBUS handler's table (taken out before the unmap).
    fault: Option<FaultGuard>,
    _file: File,
}

// SAFETY: the mapping is only accessed through atomic 64-bit operations (`mark`), and
// it stays mapped until the value is dropped; sharing it between worker threads is what
// the frontend expects (it reads the same words concurrently).
unsafe impl Send for DirtyLog {}
// SAFETY: as above: every access is an atomic operation on the shared words.
unsafe impl Sync for DirtyLog {}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096).max(1)
}

impl DirtyLog {
    /// Map `size` bytes at `offset` of `file` (SET_LOG_BASE), which must cover guest
    /// memory up to `guest_end` (the end of the highest region).
    pub fn map(file: File, size: u64, offset: u64, guest_end: u64) -> Result<Self, DirtyLogError> {
        if size == 0 {
            return Err(DirtyLogError::Empty);
        }
        if offset % 8 != 0 {
            return Err(DirtyLogError::Misaligned(offset));
        }
        let file_len = file.metadata().map_err(DirtyLogError::Stat)?.len();
        match offset.checked_add(size) {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(DirtyLogError::OutsideFile {
                    size,
                    offset,
                    file_len,
                })
            }
        }
        let covers = (size / 8).saturating_mul(WORD_COVERS);
        if covers < guest_end {
            return Err(DirtyLogError::TooSmall {
                size,
                covers,
                needs: guest_end,
            });
        }
        let map_offset = offset - offset % page_size();
        let delta = offset - map_offset;
        let too_big = || DirtyLogError::Map(io::Error::from_raw_os_error(libc::ENOMEM));
        let map_len = usize::try_from(size + delta).map_err(|_| too_big())?;
        let nwords = usize::try_from(size / 8).map_err(|_| too_big())?;
        let off = libc::off_t::try_from(map_offset).map_err(|_| too_big())?;
        // SAFETY: a new shared mapping of a file we own, at a page-aligned offset; the
        // kernel picks the address, and the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DirtyLogError::Map(io::Error::last_os_error()));
        }
        let map = NonNull::new(p).ok_or_else(too_big)?;
        let delta = usize::try_from(delta).map_err(|_| too_big())?;
        // SAFETY: `delta` < one page <= `map_len`, so the pointer stays inside the
        // mapping; mmap returns page-aligned memory and `offset` is 8-byte aligned, so
        // the words are aligned for AtomicU64.
        let words =
            unsafe { NonNull::new_unchecked(p.cast::<u8>().add(delta).cast::<AtomicU64>()) };
        let fault = fault::register(p.cast::<u8>(), map_len);
        Ok(DirtyLog {
            map,
            map_len,
            words,
            nwords,
            missed: AtomicU64::new(0),
            fault,
            _file: file,
        })
    }

    /// Guest-physical bytes the log covers.
    pub fn covers(&self) -> u64 {
        u64::try_from(self.nwords)
            .unwrap_or(u64::MAX)
            .saturating_mul(WORD_COVERS)
    }

    /// Writes that could not be logged (their page lies beyond the log).
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    fn word(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.nwords {
            return None;
        }
        // SAFETY: `i` < `nwords`, the words lie inside the live mapping and are aligned
        // (see `map`); AtomicU64 allows shared access.
        Some(unsafe { &*self.words.as_ptr().add(i) })
    }

    /// Log a write of `len` bytes at guest-physical `gpa`: the bit of every 4 KiB page
    /// it touches. Call it after the write.
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / VHOST_LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / VHOST_LOG_PAGE;
        let mut page = first;
        while page <= last {
            let Some(word) = usize::try_from(page / 64).ok().and_then(|i| self.word(i)) else {
                self.missed.fetch_add(last - page + 1, Ordering::Relaxed);
                return;
            };
            // The bits of this word from `page` to `last` (or the word's end).
            let lo = page % 64;
            let hi = (last - (page - lo)).min(63);
            let bits = if hi - lo == 63 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo + 1)) - 1) << lo
            };
            word.fetch_or(bits, Ordering::Release);
            page = page - lo + 64;
        }
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // Unregister first: after the unmap the range may be reused by anything.
        drop(self.fault.take());
        // SAFETY: `map`/`map_len` are the mapping made in `map`, unmapped exactly once,
        // here; nothing refers to it any more (`mark` borrows `self`).
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmem::test_memfd as memfd;
    use std::os::unix::fs::FileExt;

    fn bits(f: &File, offset: u64, words: usize) -> Vec<u64> {
        let mut b = vec![0u8; words * 8];
        f.read_exact_at(&mut b, offset).unwrap();
        b.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn marks_the_page_of_every_byte_written() {
        let f = memfd(8192);
        let log = DirtyLog::map(f.try_clone().unwrap(), 64, 8, 8 * WORD_COVERS).unwrap();
        assert_eq!(log.covers(), 8 * WORD_COVERS);
        log.mark(0, 1);
        log.mark(4095, 2); // pages 0 and 1
        log.mark(65 * 4096 + 100, 4096); // pages 65 and 66
        log.mark(3 * WORD_COVERS, WORD_COVERS); // all of word 3
        log.mark(5 * WORD_COVERS - 4096, 8192); // last of word 4, first of word 5
        log.mark(123, 0); // nothing
        let w = bits(&f, 8, 8);
        assert_eq!(w[0], 0b11);
        assert_eq!(w[1], 0b110);
        assert_eq!(w[2], 0);
        assert_eq!(w[3], u64::MAX);
        assert_eq!(w[4], 1 << 63);
        assert_eq!(w[5], 1);
        assert_eq!(bits(&f, 0, 1)[0], 0, "nothing before the offset");
        assert_eq!(log.missed(), 0);
    }

    #[test]
    fn a_write_beyond_the_log_is_counted_not_lost_silently() {
        let f = memfd(4096);
        let log = DirtyLog::map(f, 8, 0, WORD_COVERS).unwrap();
        log.mark(WORD_COVERS - 4096, 3 * 4096);
        assert_eq!(log.missed(), 2, "two pages beyond the one-word log");
    }

    #[test]
    fn bad_sizes_and_offsets_are_refused() {
        let f = || memfd(4096);
        assert!(matches!(
            DirtyLog::map(f(), 0, 0, 0),
            Err(DirtyLogError::Empty)
        ));
        assert!(matches!(
            DirtyLog::map(f(), 8, 4, 0),
            Err(DirtyLogError::Misaligned(4))
        ));
        assert!(matches!(
            DirtyLog::map(f(), 4096, 8, 0),
            Err(DirtyLogError::OutsideFile { .. })
        ));
        assert!(matches!(
            DirtyLog::map(f(), 8, u64::MAX - 7, 0),
            Err(DirtyLogError::OutsideFile { .. })
        ));
        let e = DirtyLog::map(f(), 8, 0, WORD_COVERS + 1).unwrap_err();
        assert!(matches!(e, DirtyLogError::TooSmall { .. }), "{e}");
        assert!(
            e.to_string().contains("covers guest memory up to 0x40000"),
            "{e}"
        );
    }
}
