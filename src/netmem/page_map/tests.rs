// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Unit tests of the guest page map.

use super::*;

/// A memfd of `size` bytes (also the datapath unit tests' guest memory).
pub(crate) fn memfd(size: u64) -> File {
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked
    // and owned by the File below.
    let fd = unsafe { libc::memfd_create(c"vnm-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

/// Two regions of one memfd, the second at a non-zero mmap offset, as QEMU sends.
fn two_regions() -> SharedPageMap {
    let f = memfd(0x30_0000);
    let map = SharedPageMap::new();
    map.set_table(vec![
        RegionSpec {
            gpa: 0,
            size: 0x10_0000,
            file: f.try_clone().unwrap(),
            offset: 0,
            user_addr: 0x7f00_0000_0000,
        },
        RegionSpec {
            gpa: 0x10_0000,
            size: 0x20_0000,
            file: f,
            offset: 0x10_0000,
            user_addr: 0x7f00_1000_0000,
        },
    ])
    .unwrap();
    map
}

#[test]
fn frags_split_at_region_boundaries() {
    let shared = two_regions();
    let map = shared.load();
    let mut l = FragList::new();
    map.push_frags(0xf_f000, 0x2000, &mut l).unwrap();
    assert_eq!(l.nr_frags(), 2);
    assert_eq!(l.len(), 0x2000);
    let f = l.frags();
    assert_eq!(f[0].len, 0x1000);
    assert_eq!(f[0].netmem.index(), 0xff);
    assert_eq!(f[1].offset, 0);
    assert_eq!(f[1].netmem.index(), 0);
    assert_ne!(f[0].netmem.owner(), f[1].netmem.owner());
    // Bytes written through the frags land at the right guest addresses.
    let pattern: Vec<u8> = (0..0x2000u32)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    assert_eq!(l.copy_from(&pattern), 0x2000);
    let mut back = vec![0u8; 0x2000];
    use vm_memory::Bytes;
    map.mem()
        .read_slice(&mut back, GuestAddress(0xf_f000))
        .unwrap();
    assert_eq!(back, pattern);
}

#[test]
fn ranges_outside_memory_are_refused_without_side_effects() {
    let shared = two_regions();
    let map = shared.load();
    let mut l = FragList::new();
    assert!(matches!(
        map.push_frags(0x2f_f000, 0x2000, &mut l),
        Err(PageMapError::OutOfRange { .. })
    ));
    assert!(matches!(
        map.push_frags(u64::MAX - 10, 100, &mut l),
        Err(PageMapError::Wraps { .. })
    ));
    assert!(l.is_empty());
    assert!(map.contains(0, 0x30_0000));
    assert!(!map.contains(0, 0x30_0001));
}

#[test]
fn frontend_addresses_translate() {
    let shared = two_regions();
    let map = shared.load();
    assert_eq!(map.va_to_gpa(0x7f00_0000_0010), Some(0x10));
    assert_eq!(map.va_to_gpa(0x7f00_1000_0010), Some(0x10_0010));
    assert_eq!(map.va_to_gpa(0x7f00_2000_0000), None);
}

#[test]
fn removal_waits_for_pinned_pages_and_keeps_the_mapping() {
    let shared = two_regions();
    let pages = Arc::clone(shared.load().regions()[1].pages());
    assert!(pages.get_page(3));
    let t0 = Instant::now();
    shared.remove_region(0x10_0000, 0x20_0000).unwrap();
    assert!(
        t0.elapsed() >= REMOVE_WAIT,
        "removal did not wait for the pinned page"
    );
    assert_eq!(shared.load().regions().len(), 1);
    assert_eq!(shared.retired_regions(), 1);
    pages.put_page(3);
    drop(pages);
    assert_eq!(shared.retired_regions(), 0);
    assert!(matches!(
        shared.remove_region(0x10_0000, 0x20_0000),
        Err(PageMapError::NoSuchRegion { .. })
    ));
}

#[test]
fn replacing_the_table_does_not_wait_for_unused_regions() {
    let shared = two_regions();
    let t0 = Instant::now();
    shared.clear();
    assert!(t0.elapsed() < REMOVE_WAIT);
    assert_eq!(shared.retired_regions(), 0);
    assert!(shared.load().regions().is_empty());
}

#[test]
fn the_same_region_added_twice_needs_two_removals() {
    let shared = two_regions();
    let f = memfd(0x1000);
    let spec = |file: File| RegionSpec {
        gpa: 0x100_0000,
        size: 0x1000,
        file,
        offset: 0,
        user_addr: 0x7f00_3000_0000,
    };
    shared.add_region(spec(f.try_clone().unwrap())).unwrap();
    shared.add_region(spec(f)).unwrap();
    assert_eq!(shared.load().regions().len(), 3);
    shared.remove_region(0x100_0000, 0x1000).unwrap();
    assert!(shared.load().contains(0x100_0000, 0x1000));
    shared.remove_region(0x100_0000, 0x1000).unwrap();
    assert!(!shared.load().contains(0x100_0000, 0x1000));
}

#[test]
fn add_region_follows_and_overlap_is_refused() {
    let shared = two_regions();
    shared
        .add_region(RegionSpec {
            gpa: 0x100_0000,
            size: 0x1000,
            file: memfd(0x1000),
            offset: 0,
            user_addr: 0x7f00_3000_0000,
        })
        .unwrap();
    assert!(shared.load().contains(0x100_0000, 0x1000));
    let overlap = shared.add_region(RegionSpec {
        gpa: 0x100_0800,
        size: 0x1000,
        file: memfd(0x1000),
        offset: 0,
        user_addr: 0,
    });
    assert!(matches!(overlap, Err(PageMapError::Layout(_))));
}

fn spec(file: File, size: u64, offset: u64) -> RegionSpec {
    RegionSpec {
        gpa: 0,
        size,
        file,
        offset,
        user_addr: 0x7f00_0000_0000,
    }
}

/// Issue 10, case 1: a 16 TiB region over a small memfd is refused, not an abort.
#[test]
fn a_region_beyond_its_file_is_refused() {
    let map = SharedPageMap::new();
    let huge = map.set_table(vec![spec(memfd(0x10_0000), 1 << 44, 0)]);
    assert!(
        matches!(huge, Err(PageMapError::BeyondFile { .. })),
        "{huge:?}"
    );
    // Issue 10, case 2: 4 MiB over 64 KiB, and an offset at the end of the file.
    let r = map.set_table(vec![spec(memfd(0x1_0000), 0x40_0000, 0)]);
    assert!(matches!(r, Err(PageMapError::BeyondFile { .. })), "{r:?}");
    let r = map.add_region(spec(memfd(0x1_0000), 0x1000, 0x1_0000));
    assert!(matches!(r, Err(PageMapError::BeyondFile { .. })), "{r:?}");
    let r = map.set_table(vec![spec(memfd(0x1_0000), 0x1000, u64::MAX - 0xfff)]);
    assert!(matches!(r, Err(PageMapError::BeyondFile { .. })), "{r:?}");
    let r = map.set_table(vec![spec(memfd(0x1_0000), 0, 0)]);
    assert!(matches!(r, Err(PageMapError::Empty { .. })), "{r:?}");
    let r = map.set_table(vec![spec(memfd(0x2_0000), 0x1000, 0x800)]);
    assert!(matches!(r, Err(PageMapError::Misaligned { .. })), "{r:?}");
    let mut wraps = spec(memfd(0x1_0000), 0x1000, 0);
    wraps.user_addr = u64::MAX - 0x10;
    let r = map.set_table(vec![wraps]);
    assert!(
        matches!(r, Err(PageMapError::UserAddrWraps { .. })),
        "{r:?}"
    );
    // A socket is not guest memory.
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let sock = File::from(std::os::fd::OwnedFd::from(sock));
    let r = map.set_table(vec![spec(sock, 0x1000, 0)]);
    assert!(matches!(r, Err(PageMapError::NotAFile { .. })), "{r:?}");
    assert!(map.load().regions().is_empty());
    // The exact size of the file is fine.
    map.set_table(vec![spec(memfd(0x1_0000), 0x1_0000, 0)])
        .unwrap();
}

/// A sparse file as large as claimed still meets the guest memory ceiling.
#[test]
fn the_guest_memory_ceiling_holds_for_tables_and_added_regions() {
    let map = SharedPageMap::with_limit(0x20_0000);
    let r = map.set_table(vec![spec(memfd(1 << 44), 1 << 44, 0)]);
    assert!(
        matches!(r, Err(PageMapError::TooMuchMemory { .. })),
        "{r:?}"
    );
    let f = memfd(0x30_0000);
    map.set_table(vec![spec(f.try_clone().unwrap(), 0x10_0000, 0)])
        .unwrap();
    map.add_region(RegionSpec {
        gpa: 0x10_0000,
        size: 0x10_0000,
        file: f.try_clone().unwrap(),
        offset: 0x10_0000,
        user_addr: 0x7f00_1000_0000,
    })
    .unwrap();
    let r = map.add_region(RegionSpec {
        gpa: 0x20_0000,
        size: 0x1000,
        file: f,
        offset: 0x20_0000,
        user_addr: 0x7f00_2000_0000,
    });
    assert!(
        matches!(r, Err(PageMapError::TooMuchMemory { .. })),
        "{r:?}"
    );
    assert_eq!(map.load().regions().len(), 2);
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn descriptors_cost_at_most_a_fifth_of_a_percent() {
    // Fully committed, a descriptor array is 8 bytes per 4 KiB page ...
    let per_page = std::mem::size_of::<NetmemDesc>() as f64 / PAGE_SIZE as f64;
    assert!(per_page <= 0.002, "{per_page}");
    // ... and it is only committed where touched: a 16 GiB region costs ~nothing.
    let before = rss_kib();
    let pages = RegionPages::new(1, 0, 16 << 30, 0);
    let after_alloc = rss_kib();
    assert!(pages.get_page(12345));
    let grown = after_alloc.saturating_sub(before);
    assert!(
        grown * 1024 <= (16u64 << 30) / 500,
        "descriptor array resident: {grown} KiB"
    );
    pages.put_page(12345);
}

#[test]
fn word_copies_read_and_write_every_byte_at_every_alignment() {
    // 8-aligned backing; every offset 0..8 exercises the 8-, 4-, 2- and 1-byte words.
    let mut buf = [0u64; 8];
    let base = buf.as_mut_ptr().cast::<u8>();
    for off in 0..8usize {
        let pattern: [u8; 16] = std::array::from_fn(|i| u8::try_from(off * 16 + i).unwrap() ^ 0x5a);
        // SAFETY: `off + 16 <= 64` bytes of `buf`.
        unsafe { volatile_store(base.add(off), pattern) };
        // SAFETY: as above.
        let back: [u8; 16] = unsafe { volatile_load(base.add(off)) };
        assert_eq!(back, pattern, "offset {off}");
        // SAFETY: as above.
        let whole: [u8; 64] = unsafe { volatile_load(base) };
        assert_eq!(
            &whole[off..off + 16],
            &pattern,
            "offset {off}: stored in place"
        );
        // The 12-byte header and the 2-byte index forms.
        let hdr: [u8; 12] = std::array::from_fn(|i| u8::try_from(i + 1).unwrap());
        // SAFETY: `off + 12 <= 64`.
        unsafe { volatile_store(base.add(off), hdr) };
        // SAFETY: as above.
        let back12 = unsafe { volatile_load::<12>(base.add(off)) };
        assert_eq!(back12, hdr, "offset {off}");
        // SAFETY: `off + 2 <= 64`.
        unsafe { volatile_store(base.add(off), [0xaa, 0xbb]) };
        // SAFETY: as above.
        let back2 = unsafe { volatile_load::<2>(base.add(off)) };
        assert_eq!(back2, [0xaa, 0xbb]);
    }
    assert_eq!(word_for(base, 16), 8);
    assert_eq!(word_for(base.wrapping_add(4), 12), 4);
    assert_eq!(word_for(base.wrapping_add(2), 16), 2);
    assert_eq!(word_for(base.wrapping_add(1), 16), 1);
}
