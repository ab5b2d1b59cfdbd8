// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Resuming from the flags (`resume::check_base`): a base where the device stopped is
//! kept, a stale one (the base of an earlier start, as QEMU sends to a killed
//! backend's successor) is replaced by the device's used position, and the chains
//! the killed device held come again.

use super::*;
use crate::datapath::ring::packed::resume::{check_base, Resume};
use vm_memory::GuestAddress;

fn check(r: &Rig, base: PackedIndices) -> Resume {
    check_base(&r.g.map, r.drv.desc_addr().0, r.dev.size(), base)
}

/// `rounds` chains of one slot posted, taken and returned, then `held` taken and not
/// returned (the device is killed holding them) and `waiting` posted and not taken.
fn killed_at(size: u16, rounds: u32, held: u16, waiting: u16) -> (Rig, Vec<u16>) {
    let mut r = Rig::new(size, |_| {});
    for i in 0..rounds {
        r.round(1, i);
    }
    let ids: Vec<u16> = (0..held + waiting).map(|_| r.add(1)).collect();
    assert_eq!(r.available(), Some((held + waiting).min(AVAILABLE_SCAN)));
    for &id in &ids[..usize::from(held)] {
        assert_eq!(r.pop().map(|p| p.id), Some(id));
    }
    (r, ids)
}

#[test]
fn a_fresh_ring_and_a_base_where_the_device_stopped_are_kept() {
    let r = Rig::new(8, |_| {});
    assert_eq!(check(&r, PackedIndices::START), Resume::Base);
    for size in [1u16, 2, 3, 5, 8, 64] {
        for rounds in [
            0,
            1,
            u32::from(size) - 1,
            u32::from(size),
            2 * u32::from(size) + 1,
        ] {
            for (held, waiting) in [(0, 0), (0, size), (size, 0), (size / 2, size - size / 2)] {
                let (mut r, ids) = killed_at(size, rounds, held, waiting);
                // Both the worker's own fold-back (avail past the held chains) and the
                // handover form with nothing in flight.
                assert_eq!(
                    check(&r, r.dev.indices()),
                    Resume::Base,
                    "size {size} rounds {rounds}"
                );
                for &id in &ids[..usize::from(held)] {
                    assert!(r.add_used(id, 0));
                }
                r.signal();
                r.used();
                assert_eq!(
                    check(&r, r.dev.indices()),
                    Resume::Base,
                    "size {size} rounds {rounds}"
                );
            }
        }
    }
    // A chain of several slots returned last leaves its tail with available flags: an
    // exact base is still kept.
    let mut r = Rig::new(8, |_| {});
    r.round(1, 0);
    r.round(3, 0);
    assert_eq!(check(&r, r.dev.indices()), Resume::Base);
}

#[test]
fn a_stale_base_resumes_at_the_used_position_and_the_held_chains_come_again() {
    for size in [1u16, 2, 3, 5, 8, 64] {
        let laps = [
            1,
            u32::from(size) - 1,
            u32::from(size),
            u32::from(size) + 2,
            3 * u32::from(size) + 1,
        ];
        for rounds in laps {
            for (held, waiting) in [
                (0, 0),
                (1, 0),
                (0, 1),
                (size, 0),
                (size / 2, size - size / 2),
            ] {
                let what = format!("size {size} rounds {rounds} held {held} waiting {waiting}");
                let (mut r, ids) = killed_at(size, rounds, held, waiting);
                let used = r.dev.indices().used;
                let laps = 2 * u32::from(size);
                let gap = (RingPosition::START.lap_offset(size).unwrap() + laps
                    - used.lap_offset(size).unwrap())
                    % laps;
                let got = check(&r, PackedIndices::START);
                if gap == 0 || (gap == 1 && held + waiting > 0) {
                    // Positions are known modulo two laps: the stale base is where the
                    // device stands, or one chain past it, which is what a device that
                    // stopped after a chain of two slots looks like (kept, see
                    // `resume`).
                    assert_eq!(got, Resume::Base, "{what}");
                    if gap != 0 {
                        continue;
                    }
                } else {
                    assert_eq!(
                        got,
                        Resume::Recovered(PackedIndices { avail: used, used }),
                        "{what}"
                    );
                }
                // The successor, from the recovered positions: every chain the driver
                // has out comes to it, the held ones first, and goes back.
                let mut s = r.drv.setup();
                s.indices = PackedIndices { avail: used, used };
                r.dev = PackedRing::new(s).unwrap();
                assert_eq!(
                    r.available(),
                    Some((held + waiting).min(AVAILABLE_SCAN)),
                    "{what}"
                );
                for &id in &ids {
                    assert_eq!(r.pop().map(|p| p.id), Some(id), "{what}");
                    assert!(r.add_used(id, 1));
                }
                r.signal();
                let back: Vec<u16> = r.used().iter().map(|u| u.0).collect();
                assert_eq!(back, ids, "{what}");
                same_place(&r);
                r.round(1, 7);
                assert_eq!(r.dev.fault(), None, "{what}");
            }
        }
    }
}

#[test]
fn flags_that_are_not_two_runs_keep_the_base() {
    let (r, _) = killed_at(8, 3, 0, 0);
    // Slot 5's AVAIL bit flipped: three runs, no driver position to find.
    let mut d = r.drv.read_desc(&r.g, 5);
    d.flags ^= DESC_F_AVAIL;
    r.g.write(GuestAddress(r.drv.desc_addr().0 + 16 * 5), &d.bytes());
    assert_eq!(check(&r, PackedIndices::START), Resume::Unknown);
    // A base that is not stale is kept all the same.
    assert_eq!(check(&r, r.dev.indices()), Resume::Base);
}

#[test]
fn an_unreadable_ring_keeps_the_base() {
    let r = Rig::new(8, |_| {});
    let resume = check_base(&r.g.map, HOLE_GPA, 8, PackedIndices::START);
    assert_eq!(resume, Resume::Base);
}
