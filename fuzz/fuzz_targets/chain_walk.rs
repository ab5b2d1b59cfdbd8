// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! (b) The chain walker: `ChainWalker::walk` over random descriptor tables, through
//! both of its memories (the netmem `GuestPageMap` the data path uses, and vm-memory's
//! `GuestMemoryMmap`).
//!
//! Input: layout (1 byte), log2 of the queue size (1), descriptor table address (4),
//! head (2), flags (1: bit 0 RING_INDIRECT_DESC), then the guest memory image
//! (patches at guest-physical offsets, `vnm_fuzz::patch`).
//! Checks: no panic; the walk over the page map equals the reference model
//! (`vnm_fuzz::model::walk`), error for error; the walk over vm-memory gives the same
//! answer except where a descriptor straddles two regions (vm-memory reads across
//! them, the page map's fast path does not); an accepted chain has 1 to `size` buffers,
//! none empty, none wrapping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_netmem::virtio::chain::Segments;
use vhost_netmem::virtio::{ChainError, ChainWalker};
use vnm_fuzz::input::Cursor;
use vnm_fuzz::memory;
use vnm_fuzz::model::{self, Ranges, RingGeom};

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mem = memory::layout(c.u8());
    let size = 1u16 << (c.u8() % 9);
    let desc = u64::from(c.u32());
    let head = c.u16();
    let indirect = c.u8() & 1 != 0;
    let map = mem.load(c.rest());

    let walker = ChainWalker {
        desc_table: desc,
        queue_size: size,
        indirect,
    };
    let mut segs = Segments::new();
    let got = walker.walk(&*map, head, &mut segs).map(|_| segs.to_vec());
    let geom = RingGeom {
        size,
        desc,
        avail: 0,
        used: 0,
        indirect,
    };
    let want = model::walk(mem, &map, &geom, head, &mut Ranges::default());
    assert_eq!(
        got, want,
        "walker disagrees with the model (head {head}, size {size})"
    );

    let mut segs2 = Segments::new();
    let via_mmap = walker
        .walk(map.mem(), head, &mut segs2)
        .map(|_| segs2.to_vec());
    if via_mmap != got {
        // The only allowed difference: the page map refuses a descriptor that straddles
        // two adjacent regions, which vm-memory reads across.
        assert!(
            matches!(got, Err(ChainError::TableOutsideMemory(_))) && mem.regions().len() > 1,
            "GuestMemoryMmap walk {via_mmap:?} differs from GuestPageMap walk {got:?}"
        );
    }

    if let Ok(s) = &got {
        assert!(!s.is_empty() && s.len() <= usize::from(size));
        for seg in s {
            assert!(seg.len > 0);
            assert!(seg.gpa.checked_add(u64::from(seg.len)).is_some());
        }
    }
});
