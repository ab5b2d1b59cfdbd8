// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Guest memory faults: a frontend that shrinks a region's file after handing it over.
//!
//! Every region is checked against `fstat` of its file when it arrives
//! ([`super::page_map::check_region`]), but the frontend keeps the file and may truncate
//! it at any later time: an access to a mapped page past the new end of the file then
//! raises SIGBUS, which would kill the whole process. This module installs a SIGBUS
//! handler that knows the address ranges of the guest mappings (registered by
//! `SharedPageMap` for as long as each mapping lives). A fault inside one of them is
//! absorbed: the faulting page is replaced by a private zero page (the access is
//! retried and succeeds, reading zeros), the fault is counted and the fault eventfd
//! becomes readable, and the control plane ends that frontend's connection (its rings
//! stop, its memory is unmapped). A fault anywhere else is not ours: the previous
//! action is restored and the access faults again as if no handler had been there.
//!
//! Only async-signal-safe work happens in the handler: atomic loads and stores, `mmap`
//! and `write` system calls.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Guest mappings that can be registered at once (32 regions per table, plus tables
/// still referenced while a new one is published).
const MAX_RANGES: usize = 256;

/// Sizes of the page replaced on a fault: a base page, else a 2 MiB huge page (a
/// hugetlbfs mapping cannot be split below its page size).
const PATCH_SIZES: [usize; 2] = [4096, 2 << 20];

#[allow(clippy::declare_interior_mutable_const)]
const FREE: AtomicUsize = AtomicUsize::new(0);
/// Start of each registered range (0: free slot).
static STARTS: [AtomicUsize; MAX_RANGES] = [FREE; MAX_RANGES];
/// End (exclusive) of each registered range.
static ENDS: [AtomicUsize; MAX_RANGES] = [FREE; MAX_RANGES];
/// Faults absorbed since start-up.
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// The eventfd made readable by each absorbed fault (-1 before [`install`]).
static NOTIFY: AtomicI32 = AtomicI32::new(-1);
/// The SIGBUS action in place before ours, restored for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// Keeps the eventfd open for the life of the process.
static NOTIFY_OWNER: OnceLock<OwnedFd> = OnceLock::new();

/// A registered guest mapping; dropping it unregisters the range (drop it only once
/// nothing accesses the mapping any more).
#[derive(Debug)]
pub struct FaultGuard {
    slot: usize,
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        ENDS[self.slot].store(0, Ordering::Release);
        STARTS[self.slot].store(0, Ordering::Release);
    }
}

/// Register the mapping `start..start + len` as guest memory; None when the table is
/// full or the range is empty or wraps (the mapping is then not protected).
pub fn register(start: *const u8, len: usize) -> Option<FaultGuard> {
    let start = start as usize;
    let end = start.checked_add(len)?;
    if start == 0 || len == 0 {
        return None;
    }
    for slot in 0..MAX_RANGES {
        if STARTS[slot]
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            ENDS[slot].store(end, Ordering::Release);
            return Some(FaultGuard { slot });
        }
    }
    None
}

/// Faults absorbed in guest mappings since start-up.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Acquire)
}

/// The eventfd that turns readable when a fault was absorbed (None before [`install`]).
pub fn notifier() -> Option<BorrowedFd<'static>> {
    NOTIFY_OWNER.get().map(AsFd::as_fd)
}

fn in_guest_memory(addr: usize) -> bool {
    (0..MAX_RANGES).any(|slot| {
        let start = STARTS[slot].load(Ordering::Acquire);
        start != 0 && addr >= start && addr < ENDS[slot].load(Ordering::Acquire)
    })
}

/// Replace the page holding `addr` by a private zero page; whether it worked.
fn patch(addr: usize) -> bool {
    PATCH_SIZES.iter().any(|&size| {
        let page = addr & !(size - 1);
        // SAFETY: `page..page + size` lies in a guest mapping (the caller checked `addr`
        // against the registered ranges; a patch that would leave the mapping fails
        // with EINVAL at the VMA boundary rather than replace anything else: a huge
        // page mapping is aligned to its page size). MAP_FIXED replaces those pages of
        // the shared file mapping, which nothing reads through Rust references (guest
        // memory is only accessed volatilely or by the kernel), with zero-filled
        // private memory; the mapping keeps its length, so its later munmap still
        // covers exactly what it mapped.
        let r = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        r != libc::MAP_FAILED
    })
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; si_addr is
    // the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    if in_guest_memory(addr) && patch(addr) {
        FAULTS.fetch_add(1, Ordering::AcqRel);
        let fd = NOTIFY.load(Ordering::Acquire);
        if fd >= 0 {
            let one = 1u64.to_ne_bytes();
            // SAFETY: write(2) is async-signal-safe; `one` is a live 8-byte buffer and
            // `fd` the process-lifetime eventfd. A failed write (counter saturated)
            // still leaves the eventfd readable.
            let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
        }
        return;
    }
    // Not a guest mapping: put the previous action back; returning retries the access,
    // which faults again and gets the behaviour it would have had without us.
    if let Some(prev) = PREVIOUS.get() {
        // SAFETY: sigaction(2) is async-signal-safe; `prev` is the action saved by
        // `install`, a valid sigaction.
        unsafe { libc::sigaction(libc::SIGBUS, prev, std::ptr::null_mut()) };
    }
}

/// Install the SIGBUS handler (once per process; later calls do nothing).
pub fn install() -> io::Result<()> {
    if PREVIOUS.get().is_some() {
        return Ok(());
    }
    // SAFETY: eventfd(2) with valid flags; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    NOTIFY.store(owned.as_raw_fd(), Ordering::Release);
    let _ = NOTIFY_OWNER.set(owned);
    // SAFETY: an all-zero sigaction is a valid value to fill in (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: an all-zero sigaction is valid storage for the previous action.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `action` is fully initialised and its handler only does
    // async-signal-safe work; `previous` is valid storage for the old action.
    if unsafe { libc::sigaction(libc::SIGBUS, &action, &mut previous) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = PREVIOUS.set(previous);
    Ok(())
}

/// Empty the fault eventfd (a new connection starts with no fault pending); whether a
/// fault was pending.
pub fn take_pending() -> bool {
    let Some(fd) = NOTIFY_OWNER.get() else {
        return false;
    };
    let mut v = [0u8; 8];
    // SAFETY: read(2) of 8 bytes into a live 8-byte buffer on our nonblocking eventfd.
    let n = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
    n == 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_ranges_are_found_until_released() {
        let buf = [0u8; 64];
        let g = register(buf.as_ptr(), buf.len()).unwrap();
        let a = buf.as_ptr() as usize;
        assert!(in_guest_memory(a) && in_guest_memory(a + 63));
        assert!(!in_guest_memory(a + 64));
        drop(g);
        assert!(!in_guest_memory(a));
        assert!(register(std::ptr::null(), 10).is_none());
    }

    /// A shrunk memfd under a registered mapping: the read returns zeros instead of
    /// killing the test process.
    #[test]
    fn a_fault_in_a_registered_mapping_is_absorbed() {
        install().unwrap();
        // SAFETY: memfd_create with a static name; checked; owned by the File.
        let fd = unsafe { libc::memfd_create(c"vnm-fault".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.set_len(0x4000).unwrap();
        // SAFETY: a fresh shared mapping of 4 pages of the memfd, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0x4000,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let g = register(p.cast(), 0x4000).unwrap();
        f.set_len(0x1000).unwrap();
        let before = faults();
        // SAFETY: inside the live mapping; volatile, as for guest memory.
        let v = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(0x2000)) };
        assert_eq!(v, 0);
        assert!(faults() > before);
        drop(g);
        // SAFETY: the mapping made above, not used after this.
        unsafe { libc::munmap(p, 0x4000) };
    }
}
