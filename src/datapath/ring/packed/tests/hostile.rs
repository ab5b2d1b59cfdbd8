// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What a hostile driver does to a packed ring: bad buffers are the chain's fault;
//! ids out of range or in use, descriptors made available twice, wrap counters that
//! lie, lists that never end and rings outside guest memory break the ring.

use super::*;

#[test]
fn buffers_whose_length_wraps_or_is_zero_are_the_chains_fault() {
    let mut r = Rig::new(4, |_| {});
    for (addr, len, want) in [
        (
            u64::MAX - 4,
            10,
            ChainError::Wraps {
                gpa: u64::MAX - 4,
                len: 10,
            },
        ),
        (
            u64::MAX,
            1,
            ChainError::Wraps {
                gpa: u64::MAX,
                len: 1,
            },
        ),
        (r.buf, 0, ChainError::ZeroLength),
    ] {
        // The bad buffer first, a good one after: the whole chain is dropped.
        let id = r.drv.add_chain(
            &r.g,
            &[
                Buf {
                    addr,
                    len,
                    write: false,
                },
                Buf {
                    addr: r.buf,
                    len: 8,
                    write: false,
                },
            ],
        );
        assert_eq!(r.popped(), Some((id, Err(want))));
        assert!(r.add_used(id, 0));
        r.signal();
        assert_eq!(r.used(), vec![(id, 0)]);
    }
    same_place(&r);
    assert_eq!(r.dev.fault(), None);
}

/// The ring is broken, counted once, and stays broken.
fn assert_broken(r: &mut Rig) {
    assert_eq!(r.dev.fault(), Some(RingFault::Broken));
    r.signal();
    assert_eq!(r.available(), None);
    assert_eq!(r.pop(), None);
    assert_counters(&r.m, &[("ring_errors", 1)]);
    assert_eq!(r.available(), None);
    assert_counters(&r.m, &[("ring_errors", 1)]);
}

#[test]
fn an_id_out_of_range_breaks_the_ring() {
    for bad in [8u16, 9, u16::MAX] {
        let mut r = Rig::new(8, |_| {});
        let b = r.buf;
        r.drv.add_raw(
            &r.g,
            &[PDesc {
                addr: b,
                len: 8,
                id: bad,
                flags: 0,
            }],
            true,
        );
        assert_eq!(r.available(), Some(1));
        assert_eq!(r.pop(), None);
        assert_broken(&mut r);
    }
}

#[test]
fn an_id_in_use_breaks_the_ring() {
    let mut r = Rig::new(8, |_| {});
    let id = r.add(1);
    assert!(r.pop().is_some());
    let b = r.buf;
    r.drv.add_raw(
        &r.g,
        &[PDesc {
            addr: b,
            len: 8,
            id,
            flags: 0,
        }],
        true,
    );
    assert_eq!(r.pop(), None);
    assert_broken(&mut r);
}

#[test]
fn a_descriptor_made_available_twice_breaks_the_ring() {
    // The ring is full of chains the device holds; the driver shows the first slot
    // available again with the next lap's wrap counter (a counter that lies: the
    // slot was never used).
    let mut r = Rig::new(2, |_| {});
    r.add(1);
    r.add(1);
    assert!(r.pop().is_some());
    assert!(r.pop().is_some());
    let b = r.buf;
    r.drv.add_raw(
        &r.g,
        &[PDesc {
            addr: b,
            len: 8,
            id: 1,
            flags: 0,
        }],
        true,
    );
    assert_eq!(r.available(), Some(0), "no room: nothing can be available");
    assert_eq!(r.pop(), None);
    assert_broken(&mut r);

    // The same with a fresh id and one slot still held.
    let mut r = Rig::new(2, |_| {});
    let a = r.add(1);
    r.add(1);
    assert!(r.pop().is_some());
    assert!(r.pop().is_some());
    assert!(r.add_used(a, 0));
    r.signal();
    // Slot 0 now holds a's used descriptor; slot 1's chain is still held. A chain of
    // two from slot 0 would cover slot 1.
    r.drv.add_raw(
        &r.g,
        &[
            PDesc {
                addr: b,
                len: 8,
                id: 0,
                flags: DESC_F_NEXT,
            },
            PDesc {
                addr: b,
                len: 8,
                id: 0,
                flags: 0,
            },
        ],
        true,
    );
    assert_eq!(r.pop(), None);
    assert_eq!(r.dev.fault(), Some(RingFault::Broken));
}

#[test]
fn a_wrap_counter_that_lies_is_not_trusted() {
    // AVAIL equal to USED: a used descriptor, not an available one.
    for flags in [0, DESC_F_AVAIL | DESC_F_USED, DESC_F_USED] {
        let mut r = Rig::new(4, |_| {});
        let b = r.buf;
        r.drv.add_raw(
            &r.g,
            &[PDesc {
                addr: b,
                len: 8,
                id: 0,
                flags,
            }],
            false,
        );
        assert_eq!(r.available(), Some(0), "flags {flags:#x}");
        assert_eq!(r.pop(), None);
        assert_eq!(r.dev.fault(), None);
        assert!(!r.dev.enable_notification(&r.g.map));
    }
    // The head available, the rest of its list not: the driver exposed a partial
    // list.
    let mut r = Rig::new(4, |_| {});
    let b = r.buf;
    let pos = r.drv.next_avail();
    r.drv.add_raw(
        &r.g,
        &[
            PDesc {
                addr: b,
                len: 8,
                id: 0,
                flags: DESC_F_NEXT | avail_bits(pos.wrap),
            },
            PDesc {
                addr: b,
                len: 8,
                id: 0,
                flags: avail_bits(!pos.wrap),
            },
        ],
        false,
    );
    assert_eq!(r.available(), Some(0), "a list cut short is not counted");
    assert_eq!(r.pop(), None);
    assert_broken(&mut r);
}

#[test]
fn a_chain_longer_than_the_ring_breaks_it() {
    let mut r = Rig::new(4, |_| {});
    let b = r.buf;
    let d = PDesc {
        addr: b,
        len: 8,
        id: 0,
        flags: DESC_F_NEXT,
    };
    r.drv.add_raw(&r.g, &[d; 4], true);
    assert_eq!(r.available(), Some(0));
    assert_eq!(r.pop(), None);
    assert_broken(&mut r);
}

#[test]
fn a_ring_outside_guest_memory_breaks_it() {
    for (desc, driver_event, device_event) in [
        (HOLE_GPA, None, None),
        (MEM_END - 16 * 4, None, None),
        (MEM_END - 16 * 3, None, None),
        (0, Some(HOLE_GPA), None),
        (0, None, Some(MEM_END)),
    ] {
        let mut r = Rig::new(4, |s| {
            if desc != 0 {
                s.desc = desc;
            }
            if let Some(a) = driver_event {
                s.driver_event = a;
            }
            if let Some(a) = device_event {
                s.device_event = a;
            }
        });
        if desc == MEM_END - 16 * 4 {
            // Wholly inside: a working ring.
            assert_eq!(r.available(), Some(0));
            assert_eq!(r.dev.fault(), None);
            continue;
        }
        assert_eq!(r.available(), None, "{desc:#x}");
        assert_broken(&mut r);
    }
}

#[test]
fn a_ring_broken_by_a_bad_used_write_says_so() {
    // A ring the guest moved out of memory after it was checked: the write fails.
    let mut r = Rig::new(4, |_| {});
    let id = r.add(1);
    assert!(r.pop().is_some());
    r.dev.desc = HOLE_GPA;
    assert!(!r.add_used(id, 0));
    assert_broken(&mut r);
}

#[test]
fn a_list_whose_next_points_into_nowhere_breaks_the_ring() {
    // An indirect descriptor with NEXT, and nothing made available after it.
    let mut r = Rig::new(8, |s| s.indirect = true);
    let table = r.g.alloc(1, 32, 16).0;
    r.drv.add_indirect_raw(&r.g, table, 32, DESC_F_NEXT);
    assert_eq!(r.available(), Some(0), "an unfinished list is not counted");
    assert_eq!(r.pop(), None);
    assert_broken(&mut r);
}
