// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `PackedRing` against a packed driver in a test guest: wrap-around at every size,
//! chains, indirect tables, unpop, event suppression, handing the ring over and the
//! dirty log; [`hostile`] drivers and [`in_order`] batches in their own files.

use std::os::unix::fs::FileExt;

use super::event::{RingPosition, EVENT_FLAGS_DESC, EVENT_FLAGS_DISABLE, EVENT_FLAGS_ENABLE};
use super::*;
use crate::datapath::test_guest::driver::{Buf, RingMemory};
use crate::datapath::test_guest::{assert_counters, TestGuest, HOLE_GPA, MEM_END};
use crate::datapath::test_packed_guest::{avail_bits, PDesc, PUsed, PackedDriver};
use crate::virtio::Segment;

/// One packed queue as a test drives it.
struct Rig {
    g: TestGuest,
    drv: PackedDriver,
    dev: PackedRing,
    m: QueueMetrics,
    segs: Segments,
    /// A 64-byte buffer chains point into.
    buf: u64,
}

impl Rig {
    fn new(size: u16, tweak: impl FnOnce(&mut PackedSetup)) -> Self {
        let g = TestGuest::new();
        let drv = PackedDriver::new(&g, 0, size);
        let mut setup = drv.setup();
        tweak(&mut setup);
        let dev = PackedRing::new(setup).expect("packed ring setup");
        let buf = g.buf(1, 64).0;
        Rig {
            g,
            drv,
            dev,
            m: QueueMetrics::default(),
            segs: Segments::new(),
            buf,
        }
    }

    fn available(&mut self) -> Option<u16> {
        self.dev.available(&self.g.map, &self.m)
    }

    fn pop(&mut self) -> Option<PoppedChain> {
        self.dev.pop_chain(&self.g.map, &mut self.segs)
    }

    /// The next chain's id and verdict.
    fn popped(&mut self) -> Option<(u16, Result<(), ChainError>)> {
        self.pop().map(|p| (p.id, p.chain))
    }

    fn add_used(&mut self, id: u16, len: u32) -> bool {
        self.dev.add_used(&self.g.map, id, len)
    }

    fn signal(&mut self) {
        self.dev.signal(&self.g.map, &self.m);
    }

    fn calls(&self) -> u64 {
        self.dev.call.as_ref().map_or(0, |c| c.read().unwrap_or(0))
    }

    /// A chain of `n` device-readable buffers (`n` descriptors).
    fn add(&mut self, n: usize) -> u16 {
        let bufs: Vec<Buf> = (0..n)
            .map(|i| Buf {
                addr: self.buf + u64::try_from(i).unwrap(),
                len: 8,
                write: false,
            })
            .collect();
        self.drv.add_chain(&self.g, &bufs)
    }

    fn used(&mut self) -> Vec<(u16, u32)> {
        self.drv
            .take_used(&self.g)
            .iter()
            .map(|u| (u.id, u.len))
            .collect()
    }

    /// The driver posts one chain of `n` descriptors, the device pops it, returns it
    /// with `len` and signals; the driver sees it back. Returns the interrupts.
    fn round(&mut self, n: usize, len: u32) -> u64 {
        let id = self.add(n);
        assert_eq!(self.available(), Some(1));
        let p = self.pop().expect("a chain");
        assert_eq!((p.id, p.chain), (id, Ok(())));
        assert_eq!(self.segs.len(), n);
        assert!(self.add_used(id, len));
        self.signal();
        assert_eq!(self.used(), vec![(id, len)]);
        self.calls()
    }
}

fn same_place(r: &Rig) {
    assert_eq!(
        r.dev.indices(),
        PackedIndices {
            avail: r.drv.next_avail(),
            used: r.drv.next_used(),
        },
        "device and driver agree where the ring stands"
    );
}

#[test]
fn wrap_around_at_every_queue_size() {
    // Any size up to 2^15, not only powers of two.
    for size in [1u16, 2, 3, 4, 5, 7, 256, 1024, 32768] {
        let mut r = Rig::new(size, |_| {});
        let rounds = if size > 1024 {
            u32::from(size) + 3
        } else {
            3 * u32::from(size) + 1
        };
        let mut signals = 0;
        for i in 0..rounds {
            // The driver's event structure is zero: ENABLE, an interrupt each time.
            assert_eq!(r.round(1, i), 1);
            signals += 1;
        }
        same_place(&r);
        // A full ring, returned in reverse order (out of order completion).
        for _ in 0..2 {
            let ids: Vec<u16> = (0..size).map(|_| r.add(1)).collect();
            assert_eq!(r.available(), Some(size.min(AVAILABLE_SCAN)), "size {size}");
            for &id in &ids {
                assert_eq!(r.pop().map(|p| p.id), Some(id));
            }
            assert_eq!(r.pop(), None, "nothing more");
            for &id in ids.iter().rev() {
                assert!(r.add_used(id, 5));
            }
            r.signal();
            signals += 1;
            assert_eq!(r.calls(), 1);
            let back: Vec<u16> = r.used().iter().map(|u| u.0).collect();
            assert_eq!(back, ids.iter().rev().copied().collect::<Vec<_>>());
            same_place(&r);
        }
        // Chains of two and three descriptors across the end of the ring.
        for n in [2usize, 3] {
            if usize::from(size) < n {
                continue;
            }
            for _ in 0..2 * size.min(64) + 1 {
                assert_eq!(r.round(n, 1), 1);
                signals += 1;
            }
            same_place(&r);
        }
        assert_eq!(r.dev.fault(), None);
        assert_counters(&r.m, &[("notifications", signals)]);
    }
}

#[test]
fn setup_refuses_impossible_sizes_alignments_and_indices() {
    let g = TestGuest::new();
    let drv = PackedDriver::new(&g, 0, 8);
    let with = |f: &dyn Fn(&mut PackedSetup)| {
        let mut s = drv.setup();
        f(&mut s);
        PackedRing::new(s).err()
    };
    assert_eq!(with(&|s| s.size = 0), Some(PackedRingError::Size(0)));
    assert_eq!(
        with(&|s| s.size = 32769),
        Some(PackedRingError::Size(32769))
    );
    assert_eq!(with(&|s| s.size = 32768), None);
    assert!(matches!(
        with(&|s| s.desc += 8),
        Some(PackedRingError::Misaligned { align: 16, .. })
    ));
    assert!(matches!(
        with(&|s| s.driver_event += 2),
        Some(PackedRingError::Misaligned { align: 4, .. })
    ));
    assert!(matches!(
        with(&|s| s.device_event += 1),
        Some(PackedRingError::Misaligned { align: 4, .. })
    ));
    assert!(matches!(
        with(&|s| s.desc = u64::MAX - 15),
        Some(PackedRingError::Wraps { .. })
    ));
    assert!(matches!(
        with(&|s| s.device_event = u64::MAX - 3),
        Some(PackedRingError::Wraps { .. })
    ));
    assert_eq!(
        with(&|s| s.indices.avail.index = 8),
        Some(PackedRingError::IndexBeyondRing { index: 8, size: 8 })
    );
}

#[test]
fn chains_are_read_when_popped_and_returned_by_id() {
    let mut r = Rig::new(8, |_| {});
    let b = r.buf;
    let a = r.drv.add_chain(
        &r.g,
        &[
            Buf {
                addr: b,
                len: 10,
                write: false,
            },
            Buf {
                addr: b + 16,
                len: 20,
                write: true,
            },
        ],
    );
    let c = r.add(3);
    let d = r.add(1);
    assert_eq!(r.available(), Some(3));
    assert_eq!(r.pop().map(|p| p.id), Some(a));
    assert_eq!(
        r.segs.as_slice(),
        [
            Segment {
                gpa: b,
                len: 10,
                write: false
            },
            Segment {
                gpa: b + 16,
                len: 20,
                write: true
            }
        ]
    );
    assert_eq!(r.pop().map(|p| p.id), Some(c));
    assert_eq!(r.segs.len(), 3);
    assert_eq!(r.pop().map(|p| p.id), Some(d));
    // d completes first: its used descriptor overwrites a's first descriptor.
    assert!(r.add_used(d, 0));
    let slot0 = r.drv.read_desc(&r.g, 0);
    assert_eq!((slot0.id, slot0.len), (d, 0));
    assert_eq!(
        slot0.flags & (DESC_F_AVAIL | DESC_F_USED),
        DESC_F_AVAIL | DESC_F_USED
    );
    assert_eq!(
        slot0.flags & DESC_F_WRITE,
        0,
        "nothing written: no WRITE flag"
    );
    assert!(r.add_used(a, 30));
    assert!(r.add_used(c, 0));
    r.signal();
    let used = r.drv.take_used(&r.g);
    assert_eq!(
        used,
        vec![
            PUsed {
                id: d,
                len: 0,
                written: false
            },
            PUsed {
                id: a,
                len: 30,
                written: true
            },
            PUsed {
                id: c,
                len: 0,
                written: false
            },
        ]
    );
    // The used side skipped d's 1, a's 2 and c's 3 descriptors.
    assert_eq!(
        r.dev.indices().used,
        RingPosition {
            index: 6,
            wrap: true
        }
    );
    same_place(&r);
    // A returned id cannot be returned again.
    assert!(!r.add_used(a, 0));
    assert!(!r.add_used(8, 0));
    assert_eq!(r.dev.fault(), None);
}

#[test]
fn unpop_gives_chains_back_in_order() {
    let mut r = Rig::new(8, |_| {});
    let ids = [r.add(1), r.add(2), r.add(1)];
    assert_eq!(r.available(), Some(3));
    for &id in &ids {
        assert_eq!(r.pop().map(|p| p.id), Some(id));
    }
    assert_eq!(r.dev.indices().avail.index, 4);
    r.dev.unpop(2);
    assert_eq!(r.dev.indices().avail.index, 1);
    assert_eq!(r.available(), Some(2));
    assert_eq!(
        r.pop().map(|p| p.id),
        Some(ids[1]),
        "popped again, not an id in use"
    );
    assert_eq!(r.segs.len(), 2);
    assert_eq!(r.pop().map(|p| p.id), Some(ids[2]));
    for &id in &ids {
        assert!(r.add_used(id, 1));
    }
    r.signal();
    assert_eq!(r.used().len(), 3);
    same_place(&r);
    assert_eq!(r.dev.fault(), None);
    assert_counters(&r.m, &[("notifications", 1)]);
}

#[test]
fn indirect_tables() {
    let mut r = Rig::new(8, |s| s.indirect = true);
    let b = r.buf;
    let bufs = [
        Buf {
            addr: b,
            len: 12,
            write: false,
        },
        Buf {
            addr: b + 12,
            len: 4,
            write: true,
        },
        Buf {
            addr: b + 16,
            len: 40,
            write: true,
        },
    ];
    let id = r.drv.add_indirect(&r.g, &bufs, 0);
    assert_eq!(r.popped(), Some((id, Ok(()))));
    let got: Vec<(u64, u32, bool)> = r.segs.iter().map(|s| (s.gpa, s.len, s.write)).collect();
    assert_eq!(
        got,
        bufs.iter()
            .map(|b| (b.addr, b.len, b.write))
            .collect::<Vec<_>>()
    );
    // NEXT (and INDIRECT) in a table are reserved and ignored: the table's length
    // alone says how many entries there are, nothing points into nowhere.
    let id2 = r
        .drv
        .add_indirect(&r.g, &bufs[..2], DESC_F_NEXT | DESC_F_INDIRECT);
    assert_eq!(r.popped(), Some((id2, Ok(()))));
    assert_eq!(r.segs.len(), 2);

    // Bad tables are the chain's fault: the chain is returned, the ring goes on.
    let table = r.g.alloc(1, 16 * 16, 16).0;
    let cases: [(u64, u32, u16, ChainError); 5] = [
        (table, 24, 0, ChainError::BadIndirect),
        (table, 0, 0, ChainError::BadIndirect),
        (table, 32, DESC_F_NEXT, ChainError::BadIndirect),
        (HOLE_GPA, 32, 0, ChainError::TableOutsideMemory(HOLE_GPA)),
        (table, 16 * 9, 0, ChainError::TooLong(8)),
    ];
    for (addr, len, extra, want) in cases {
        let id = r.drv.add_indirect_raw(&r.g, addr, len, extra);
        if extra & DESC_F_NEXT != 0 {
            // The list goes on in the ring: one more descriptor, the id at its end.
            let pos = r.drv.add_raw(
                &r.g,
                &[PDesc {
                    addr: b,
                    len: 8,
                    id,
                    flags: 0,
                }],
                true,
            );
            assert_eq!(pos.len(), 1);
            r.drv.track(id, 2);
        }
        let p = r.pop().expect("a chain");
        assert_eq!((p.id, p.chain), (id, Err(want)), "{addr:#x}+{len}");
        assert!(r.segs.is_empty(), "no segments of a bad chain");
        assert!(r.add_used(id, 0));
        r.signal();
        assert_eq!(r.used(), vec![(id, 0)]);
    }
    // A zero-length entry in the table.
    let t = r.g.alloc(1, 32, 16);
    r.g.write(
        t,
        &PDesc {
            addr: b,
            len: 0,
            id: 0,
            flags: 0,
        }
        .bytes(),
    );
    let id3 = r.drv.add_indirect_raw(&r.g, t.0, 16, 0);
    assert_eq!(r.popped(), Some((id3, Err(ChainError::ZeroLength))));
    assert!(r.add_used(id3, 0));
    // An indirect descriptor after a direct one in a list.
    let id4 = 5;
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
                addr: table,
                len: 32,
                id: id4,
                flags: DESC_F_INDIRECT,
            },
        ],
        true,
    );
    r.drv.track(id4, 2);
    assert_eq!(r.popped(), Some((id4, Err(ChainError::BadIndirect))));
    assert!(r.add_used(id4, 0));
    assert!(r.add_used(id, 0));
    assert!(r.add_used(id2, 0));
    r.signal();
    r.used();
    same_place(&r);
    assert_eq!(r.dev.fault(), None);
}

#[test]
fn indirect_descriptors_need_the_feature() {
    let mut r = Rig::new(8, |_| {});
    let b = r.buf;
    let id = r.drv.add_indirect(
        &r.g,
        &[Buf {
            addr: b,
            len: 8,
            write: false,
        }],
        0,
    );
    assert_eq!(r.popped(), Some((id, Err(ChainError::BadIndirect))));
    assert!(r.add_used(id, 0));
    r.signal();
    assert_eq!(r.used(), vec![(id, 0)]);
    assert_eq!(r.calls(), 1);
    assert_eq!(r.round(1, 3), 1);
    assert_eq!(r.dev.fault(), None);
}

#[test]
fn the_first_decision_notifies_then_the_driver_decides() {
    let mut r = Rig::new(4, |_| {});
    r.drv.set_driver_event(&r.g, 0, EVENT_FLAGS_DISABLE);
    assert_eq!(r.round(1, 1), 1, "a started ring's first decision notifies");
    assert_eq!(r.round(1, 1), 0);
    r.drv.set_driver_event(&r.g, 0, EVENT_FLAGS_ENABLE);
    assert_eq!(r.round(1, 1), 1);
    // DESC without EVENT_IDX is not valid: treated as enable.
    r.drv.set_driver_event(&r.g, 0x8003, EVENT_FLAGS_DESC);
    assert_eq!(r.round(1, 1), 1);
    // Nothing returned: no decision, no interrupt.
    r.signal();
    assert_eq!(r.calls(), 0);
    assert_counters(
        &r.m,
        &[("notifications", 3), ("notifications_suppressed", 1)],
    );
}

#[test]
fn event_idx_notifies_when_the_event_descriptor_is_used() {
    let size = 4u16;
    let mut r = Rig::new(size, |s| s.event_idx = true);
    assert_eq!(r.round(1, 1), 1, "first decision");
    // The device's next used position is (1, wrap 1).
    let at = |index, wrap| RingPosition { index, wrap }.word();
    // The event two ahead: one chain does not reach it, the next does.
    r.drv.set_driver_event(&r.g, at(2, true), EVENT_FLAGS_DESC);
    assert_eq!(r.round(1, 1), 0);
    assert_eq!(r.round(1, 1), 1);
    // Now at (3, wrap 1). Event at (0, wrap 1): a lap away, not reached by one chain
    // of two descriptors (3, 0 with wrap 0).
    r.drv.set_driver_event(&r.g, at(0, true), EVENT_FLAGS_DESC);
    assert_eq!(r.round(2, 1), 0);
    // Now at (1, wrap 0). Event (1, wrap 0): reached at once.
    r.drv.set_driver_event(&r.g, at(1, false), EVENT_FLAGS_DESC);
    assert_eq!(r.round(1, 1), 1);
    // An event inside a chain's skipped descriptors counts: at (2, wrap 0) a chain of
    // three covers 2, 3 and (0, wrap 1).
    r.drv.set_driver_event(&r.g, at(3, false), EVENT_FLAGS_DESC);
    assert_eq!(r.round(3, 1), 1);
    // DISABLE still wins with EVENT_IDX.
    r.drv
        .set_driver_event(&r.g, at(1, true), EVENT_FLAGS_DISABLE);
    assert_eq!(r.round(1, 1), 0);
    assert_counters(
        &r.m,
        &[("notifications", 4), ("notifications_suppressed", 3)],
    );
}

#[test]
fn event_idx_matches_a_brute_force_walk_at_odd_sizes() {
    for size in [3u16, 5] {
        for event in 0..2 * size {
            let ev = RingPosition {
                index: event % size,
                wrap: event < size,
            };
            let mut r = Rig::new(size, |s| s.event_idx = true);
            r.round(1, 1);
            let mut pos = r.dev.indices().used;
            for _ in 0..2 * size {
                r.drv.set_driver_event(&r.g, ev.word(), EVENT_FLAGS_DESC);
                let want = pos == ev;
                assert_eq!(
                    r.round(1, 1),
                    u64::from(want),
                    "size {size} event {ev:?} at {pos:?}"
                );
                pos = pos.advance(1, size);
            }
        }
    }
}

#[test]
fn kicks_are_turned_off_and_on() {
    let mut r = Rig::new(4, |_| {});
    r.dev.disable_notification(&r.g.map);
    assert_eq!(r.drv.device_event(&r.g).1, EVENT_FLAGS_DISABLE);
    assert!(!r.dev.enable_notification(&r.g.map));
    assert_eq!(r.drv.device_event(&r.g).1, EVENT_FLAGS_ENABLE);
    r.dev.disable_notification(&r.g.map);
    r.add(1);
    assert!(
        r.dev.enable_notification(&r.g.map),
        "a chain arrived meanwhile"
    );

    // With EVENT_IDX: the event is the next descriptor the device will read.
    let mut r = Rig::new(4, |s| s.event_idx = true);
    for _ in 0..5 {
        r.round(1, 1);
    }
    assert!(!r.dev.enable_notification(&r.g.map));
    let want = RingPosition {
        index: 1,
        wrap: false,
    }
    .word();
    assert_eq!(r.drv.device_event(&r.g), (want, EVENT_FLAGS_DESC));
    r.dev.disable_notification(&r.g.map);
    assert_eq!(r.drv.device_event(&r.g), (want, EVENT_FLAGS_DISABLE));
}

#[test]
fn the_vring_base_carries_both_wrap_counters() {
    let i = PackedIndices {
        avail: RingPosition {
            index: 3,
            wrap: false,
        },
        used: RingPosition {
            index: 1,
            wrap: true,
        },
    };
    assert_eq!(i.vring_base(), 0x8001_0003);
    assert_eq!(PackedIndices::from_vring_base(i.vring_base()), i);
    assert_eq!(PackedIndices::START.vring_base(), 0x8000_8000);
    // The avail half only: used stands where avail does.
    let q = PackedIndices::from_vring_base(0x8005);
    assert_eq!(
        q.avail,
        RingPosition {
            index: 5,
            wrap: true
        }
    );
    assert_eq!(q.used, q.avail);
    // A stopped worker's words are read literally, the corner included.
    let (a, u) = i.words();
    assert_eq!((a, u), (3, 0x8001));
    assert_eq!(PackedIndices::from_words(a, u), i);
    // The corner that reading costs: used at (0, wrap 0) with chains in flight.
    let corner = PackedIndices {
        avail: RingPosition {
            index: 2,
            wrap: false,
        },
        used: RingPosition {
            index: 0,
            wrap: false,
        },
    };
    assert_eq!(
        PackedIndices::from_vring_base(corner.vring_base()).used,
        corner.avail
    );
}

#[test]
fn a_ring_set_up_again_resumes_where_it_stood() {
    for size in [3u16, 4] {
        let mut r = Rig::new(size, |_| {});
        // Past a wrap, one chain still held when the worker stops.
        for _ in 0..size + 1 {
            r.round(1, 1);
        }
        let held = r.add(1);
        assert!(r.pop().is_some());
        let base = r.dev.indices().vring_base();
        assert!(
            !PackedIndices::from_vring_base(base).avail.wrap,
            "size {size}: the avail side wrapped"
        );
        // The next worker: from the full ring base.
        let mut s = r.drv.setup();
        s.indices = PackedIndices::from_vring_base(base);
        r.dev = PackedRing::new(s).unwrap();
        // The held chain is not the new ring's to return.
        assert!(!r.add_used(held, 0));
        assert_eq!(r.available(), Some(0));
        let d = r.add(1);
        assert_eq!(r.pop().map(|p| p.id), Some(d));
        assert!(r.add_used(d, 2));
        r.signal();
        assert_eq!(r.used(), vec![(d, 2)], "size {size}");
        assert_eq!(r.dev.fault(), None);
    }
    // From the avail half alone (QEMU's form), with nothing in flight.
    let mut r = Rig::new(3, |_| {});
    for _ in 0..4 {
        r.round(1, 1);
    }
    let word = r.dev.indices().avail.word();
    let mut s = r.drv.setup();
    s.indices = PackedIndices::from_vring_base(u32::from(word));
    r.dev = PackedRing::new(s).unwrap();
    for _ in 0..4 {
        r.round(2, 1);
    }
    same_place(&r);
}

#[test]
fn every_write_is_in_the_dirty_log() {
    let f = crate::netmem::test_memfd(4096);
    let log = Arc::new(DirtyLog::map(f.try_clone().unwrap(), 4096, 0, MEM_END).unwrap());
    let g = TestGuest::new();
    // The device event area in its own page of region 1.
    let dev_area = g.alloc(1, 8192, 4096);
    let drv = PackedDriver::new(&g, 0, 4);
    let mut s = drv.setup();
    s.device_event = dev_area.0;
    s.log = Some(log.clone());
    let dev = PackedRing::new(s).unwrap();
    let buf = g.buf(1, 64).0;
    let mut r = Rig {
        g,
        drv,
        dev,
        m: QueueMetrics::default(),
        segs: Segments::new(),
        buf,
    };
    let page_bit = |gpa: u64| {
        let page = gpa / 4096;
        let mut w = [0u8; 8];
        f.read_exact_at(&mut w, (page / 64) * 8).unwrap();
        u64::from_le_bytes(w) & (1 << (page % 64)) != 0
    };
    let ring = r.drv.desc_addr().0;
    let id = r.add(1);
    assert!(r.pop().is_some());
    assert!(!page_bit(ring), "reading logs nothing");
    assert!(r.add_used(id, 0));
    assert!(page_bit(ring), "the used descriptor");
    assert!(!page_bit(dev_area.0));
    r.dev.disable_notification(&r.g.map);
    assert!(page_bit(dev_area.0), "the device event area");
    assert_eq!(log.missed(), 0);
    assert!(r.dev.log().is_some());
}

#[test]
fn unpop_after_out_of_order_returns_finds_the_chains_intact() {
    let mut r = Rig::new(4, |_| {});
    let b = r.buf;
    let a = r.add(1);
    let c = r.add(1);
    let d = r.drv.add_chain(
        &r.g,
        &[
            Buf {
                addr: b + 1,
                len: 3,
                write: false,
            },
            Buf {
                addr: b + 2,
                len: 4,
                write: false,
            },
        ],
    );
    assert_eq!(r.available(), Some(3));
    for _ in 0..3 {
        assert!(r.pop().is_some());
    }
    let want = r.segs.clone();
    // c completes first (written over a's slot), then the last chain goes back.
    assert!(r.add_used(c, 0));
    r.dev.unpop(1);
    assert_eq!(r.pop().map(|p| p.id), Some(d), "d popped again");
    assert_eq!(r.segs, want, "its descriptors were not overwritten");
    assert!(r.add_used(d, 0));
    assert!(r.add_used(a, 0));
    r.signal();
    assert_eq!(r.used(), vec![(c, 0), (d, 0), (a, 0)]);
    same_place(&r);
    assert_eq!(r.dev.fault(), None);
}

mod hostile;
mod in_order;
mod resume;
