// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `Ring` against a driver ring in a test guest: popping, returning, publishing and
//! notifying, and what a hostile or broken ring does to it.

use super::*;
use crate::datapath::test_guest::driver::{
    need_event, Buf, SplitRing, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY,
};
use crate::datapath::test_guest::{assert_counters, Rig, TestGuest, HOLE_GPA, MEM_END};

fn available(r: &mut Rig) -> Option<u16> {
    r.dev.available(&r.g.map, &r.m)
}

fn pop(r: &mut Rig) -> Option<u16> {
    r.dev.pop_head(&r.g.map)
}

fn add_used(r: &mut Rig, head: u16, len: u32) -> bool {
    r.dev.add_used(&r.g.map, head, len)
}

fn signal(r: &mut Rig) {
    r.dev.signal(&r.g.map, &r.m);
}

/// Add one single-buffer chain (not published yet); returns its head.
fn add(r: &mut Rig) -> u16 {
    let b = r.g.buf(0, 64);
    r.drv.add_chain(&r.g, &[Buf::ro(b, 64)])
}

/// One batch the way the data path runs it: the guest posts `n` chains, the device
/// pops and returns each, then signals. Returns the interrupts raised.
fn batch(r: &mut Rig, n: u16) -> u64 {
    let heads: Vec<u16> = (0..n).map(|_| add(r)).collect();
    r.drv.publish(&r.g);
    assert_eq!(available(r), Some(n));
    for &h in &heads {
        assert_eq!(pop(r), Some(h));
        assert!(add_used(r, h, 7));
    }
    signal(r);
    let used = r.used_heads();
    assert_eq!(used, heads.iter().map(|&h| (h, 7)).collect::<Vec<_>>());
    r.calls()
}

/// A rig whose driver and device start at index `start`.
fn rig_at(start: u16, event_idx: bool) -> Rig {
    let g = TestGuest::new();
    let mut drv = SplitRing::new(&g, 0, 8);
    drv.start_at(&g, start);
    Rig::over(g, drv, |s| s.event_idx = event_idx)
}

#[test]
fn available_counts_published_heads_and_unpop_replays_them() {
    let mut r = Rig::new(8, |_| {});
    assert_eq!(available(&mut r), Some(0));
    let heads: Vec<u16> = (0..3).map(|_| add(&mut r)).collect();
    assert_eq!(available(&mut r), Some(0), "chains not published yet");
    r.drv.publish(&r.g);
    assert_eq!(available(&mut r), Some(3));
    for &h in &heads {
        assert_eq!(pop(&mut r), Some(h));
    }
    assert_eq!(available(&mut r), Some(0));
    r.dev.unpop(2);
    assert_eq!(available(&mut r), Some(2));
    assert_eq!(pop(&mut r), Some(heads[1]));
    assert_eq!(pop(&mut r), Some(heads[2]));
    assert_eq!(r.dev.indices(), (3, 0));
    assert_eq!(r.dev.fault(), None);
    assert_counters(&r.m, &[]);
}

#[test]
fn a_full_ring_is_available_one_more_is_impossible() {
    let mut r = Rig::new(8, |_| {});
    r.drv.set_avail_idx_raw(&r.g, 8);
    assert_eq!(available(&mut r), Some(8), "a whole ring ahead is legal");
    r.drv.set_avail_idx_raw(&r.g, 9);
    assert_eq!(available(&mut r), None);
    assert_eq!(r.dev.fault(), Some(RingFault::Broken));
    assert_counters(&r.m, &[("ring_errors", 1)]);
    // The ring stays broken (and is counted once) even if the index becomes sane.
    r.drv.set_avail_idx_raw(&r.g, 1);
    assert_eq!(available(&mut r), None);
    assert_counters(&r.m, &[("ring_errors", 1)]);
}

#[test]
fn an_avail_index_moving_backwards_breaks_the_ring() {
    let mut r = Rig::new(8, |_| {});
    add(&mut r);
    add(&mut r);
    r.drv.publish(&r.g);
    assert_eq!(available(&mut r), Some(2));
    pop(&mut r);
    pop(&mut r);
    r.drv.set_avail_idx_raw(&r.g, 1);
    assert_eq!(available(&mut r), None);
    assert_counters(&r.m, &[("ring_errors", 1)]);
}

#[test]
fn avail_indices_wrap_at_65536() {
    let mut r = rig_at(65534, false);
    r.drv.set_avail_idx_raw(&r.g, 65534u16.wrapping_add(8));
    assert_eq!(available(&mut r), Some(8));
    r.drv.set_avail_idx_raw(&r.g, 65534u16.wrapping_add(9));
    assert_eq!(available(&mut r), None);
    assert_counters(&r.m, &[("ring_errors", 1)]);

    // Chains posted across the wrap pop in order.
    let mut r = rig_at(65534, false);
    let heads: Vec<u16> = (0..4).map(|_| add(&mut r)).collect();
    r.drv.publish(&r.g);
    assert_eq!(available(&mut r), Some(4));
    let popped: Vec<Option<u16>> = (0..4).map(|_| pop(&mut r)).collect();
    assert_eq!(popped, heads.iter().map(|&h| Some(h)).collect::<Vec<_>>());
    assert_eq!(r.dev.indices().0, 2);
}

#[test]
fn an_avail_ring_outside_guest_memory_breaks_the_ring() {
    let mut r = Rig::new(8, |s| s.avail = HOLE_GPA);
    assert_eq!(available(&mut r), None);
    assert_eq!(r.dev.fault(), Some(RingFault::Broken));
    assert_counters(&r.m, &[("ring_errors", 1)]);
    // Its index is the last readable pair of bytes of guest memory: unreadable too.
    let mut r = Rig::new(8, |s| s.avail = MEM_END - 2);
    assert_eq!(available(&mut r), None);
    assert_counters(&r.m, &[("ring_errors", 1)]);
}

#[test]
fn an_avail_ring_entry_outside_guest_memory_breaks_the_ring() {
    // flags and idx are the last four bytes of guest memory: the entries are beyond.
    let mut r = Rig::new(8, |s| s.avail = MEM_END - 4);
    r.g.write(vm_memory::GuestAddress(MEM_END - 2), &1u16.to_le_bytes());
    // A readable index over unreadable entries promises a head that can never be
    // popped: the ring is broken at once, not after a failed pop.
    assert_eq!(available(&mut r), None);
    assert_eq!(r.dev.fault(), Some(RingFault::Broken));
    assert_eq!(pop(&mut r), None);
    assert_eq!(r.dev.indices(), (0, 0), "nothing was popped");
    signal(&mut r);
    assert_counters(&r.m, &[("ring_errors", 1)]);
    assert_eq!(available(&mut r), None);
    assert_counters(&r.m, &[("ring_errors", 1)]);
}

#[test]
fn a_used_ring_entry_outside_guest_memory_breaks_the_ring() {
    // The used ring's header and first entry are the last 12 bytes of guest memory.
    let mut r = Rig::new(8, |s| s.used = MEM_END - 12);
    let a = add(&mut r);
    let b = add(&mut r);
    r.drv.publish(&r.g);
    assert_eq!(available(&mut r), Some(2));
    assert_eq!(pop(&mut r), Some(a));
    assert_eq!(pop(&mut r), Some(b));
    assert!(add_used(&mut r, a, 1));
    assert!(
        !add_used(&mut r, b, 1),
        "the second entry is outside memory"
    );
    assert_eq!(r.dev.fault(), Some(RingFault::Broken));
    signal(&mut r);
    assert_eq!(available(&mut r), None);
    assert_counters(&r.m, &[("ring_errors", 1), ("notifications", 1)]);
}

#[test]
fn a_used_index_outside_guest_memory_breaks_the_ring() {
    let mut r = Rig::new(8, |s| s.used = HOLE_GPA);
    let a = add(&mut r);
    r.drv.publish(&r.g);
    assert_eq!(available(&mut r), Some(1));
    assert_eq!(pop(&mut r), Some(a));
    assert!(!add_used(&mut r, a, 1));
    signal(&mut r);
    assert_eq!(r.dev.fault(), Some(RingFault::Broken));
    assert_eq!(r.calls(), 0);
    assert_counters(&r.m, &[("ring_errors", 1)]);
}

#[test]
fn a_head_beyond_the_ring_is_not_returned() {
    let mut r = Rig::new(8, |_| {});
    assert!(!add_used(&mut r, 8, 0));
    assert!(!add_used(&mut r, u16::MAX, 0));
    signal(&mut r);
    assert_eq!(r.drv.used_idx(&r.g), 0);
    assert_eq!(r.dev.indices(), (0, 0));
    assert_eq!(
        r.dev.fault(),
        None,
        "a bad head is the chain's fault, not the ring's"
    );
    assert_eq!(r.calls(), 0);
    assert_counters(&r.m, &[]);
}

#[test]
fn the_used_index_is_published_once_per_batch() {
    let mut r = Rig::new(8, |_| {});
    let heads: Vec<u16> = (0..3).map(|_| add(&mut r)).collect();
    r.drv.publish(&r.g);
    available(&mut r);
    for (i, &h) in heads.iter().enumerate() {
        assert_eq!(pop(&mut r), Some(h));
        assert!(add_used(&mut r, h, 100 + u32::try_from(i).unwrap()));
    }
    // The entries are written ...
    let (_, _, used) = r.drv.addresses();
    let slot = r.g.read(vm_memory::GuestAddress(used.0 + 4 + 8), 8);
    assert_eq!(
        slot,
        [
            &u32::from(heads[1]).to_le_bytes()[..],
            &101u32.to_le_bytes()
        ]
        .concat()
    );
    // ... but the guest sees them only when the batch ends.
    assert_eq!(r.drv.used_idx(&r.g), 0);
    assert_eq!(r.calls(), 0);
    assert_eq!(r.dev.indices(), (3, 3));
    signal(&mut r);
    assert_eq!(r.drv.used_idx(&r.g), 3);
    assert_eq!(r.calls(), 1, "one interrupt for the batch");
    assert_eq!(
        r.used_heads(),
        vec![(heads[0], 100), (heads[1], 101), (heads[2], 102)]
    );
    // Nothing new: no second interrupt.
    signal(&mut r);
    assert_eq!(r.calls(), 0);
    assert_counters(&r.m, &[("notifications", 1)]);
}

#[test]
fn event_idx_used_event_decides_each_batch() {
    let mut r = Rig::new(8, |s| s.event_idx = true);
    // used_event 0: the first entry crosses it.
    assert_eq!(batch(&mut r, 2), 1);
    // used_event 5: entries 2..3 do not reach it, entries 3..6 cross it.
    r.drv.set_used_event(&r.g, 5);
    assert_eq!(batch(&mut r, 1), 0);
    assert_eq!(batch(&mut r, 3), 1);
    // Already passed: no interrupt.
    assert_eq!(batch(&mut r, 2), 0);
    // EVENT_IDX ignores the flag: used_event 8 is crossed by 8..9.
    r.drv.set_avail_flags(&r.g, VRING_AVAIL_F_NO_INTERRUPT);
    r.drv.set_used_event(&r.g, 8);
    assert_eq!(batch(&mut r, 1), 1);
    assert_counters(
        &r.m,
        &[("notifications", 3), ("notifications_suppressed", 2)],
    );
}

#[test]
fn event_idx_matches_vring_need_event_across_the_wrap() {
    for start in [0u16, 1000, 65530, 65534, 65535] {
        for n in [1u16, 2, 5] {
            for delta in 0u16..=8 {
                // used_event from a few entries behind `start` to a few beyond the batch.
                let event = start.wrapping_add(delta).wrapping_sub(2);
                // One entry before `start`: a started ring's first decision notifies.
                let mut r = rig_at(start.wrapping_sub(1), true);
                assert_eq!(batch(&mut r, 1), 1, "the first decision after start");
                r.drv.set_used_event(&r.g, event);
                let want = need_event(event, start.wrapping_add(n), start);
                let calls = batch(&mut r, n);
                assert_eq!(
                    calls,
                    u64::from(want),
                    "start {start}, {n} entries, used_event {event}"
                );
                let (sent, suppressed) = if want { (2, 0) } else { (1, 1) };
                assert_counters(
                    &r.m,
                    &[
                        ("notifications", sent),
                        ("notifications_suppressed", suppressed),
                    ],
                );
            }
        }
    }
}

#[test]
fn a_started_rings_first_decision_notifies_whatever_the_guest_asked() {
    // The previous worker may have signalled a call fd nobody read (QEMU's placeholder
    // on reconnect): the guest may be waiting for an interrupt already owed.
    for event_idx in [false, true] {
        let mut r = Rig::new(8, |s| s.event_idx = event_idx);
        r.drv.set_avail_flags(&r.g, VRING_AVAIL_F_NO_INTERRUPT);
        r.drv.set_used_event(&r.g, 100);
        assert_eq!(batch(&mut r, 1), 1, "event_idx {event_idx}");
        assert_eq!(batch(&mut r, 1), 0, "then the guest's wish counts");
        assert_counters(
            &r.m,
            &[("notifications", 1), ("notifications_suppressed", 1)],
        );
    }
}

#[test]
fn no_interrupt_flag_suppresses_without_event_idx() {
    let mut r = Rig::new(8, |_| {});
    assert_eq!(batch(&mut r, 1), 1, "the first decision after start");
    r.drv.set_avail_flags(&r.g, VRING_AVAIL_F_NO_INTERRUPT);
    assert_eq!(batch(&mut r, 2), 0);
    assert_counters(
        &r.m,
        &[("notifications", 1), ("notifications_suppressed", 1)],
    );
    r.drv.set_avail_flags(&r.g, 0);
    assert_eq!(batch(&mut r, 1), 1);
    // Without EVENT_IDX used_event means nothing.
    r.drv.set_used_event(&r.g, 100);
    assert_eq!(batch(&mut r, 1), 1);
    assert_counters(
        &r.m,
        &[("notifications", 3), ("notifications_suppressed", 1)],
    );
}

#[test]
fn no_call_fd_means_no_interrupt_and_none_counted() {
    let mut r = Rig::new(8, |s| s.call = None);
    assert_eq!(batch(&mut r, 1), 0);
    assert_counters(&r.m, &[]);
}

#[test]
fn kicks_are_turned_off_and_on() {
    // Without EVENT_IDX: the NO_NOTIFY flag.
    let mut r = Rig::new(8, |_| {});
    r.dev.disable_notification(r.g.map.mem());
    assert_eq!(r.drv.used_flags(&r.g), VRING_USED_F_NO_NOTIFY);
    add(&mut r);
    assert!(!r.drv.publish(&r.g), "the driver must not kick");
    assert!(
        r.dev.enable_notification(r.g.map.mem()),
        "a chain arrived meanwhile"
    );
    assert_eq!(r.drv.used_flags(&r.g), 0);
    available(&mut r);
    pop(&mut r);
    assert!(!r.dev.enable_notification(r.g.map.mem()));
    add(&mut r);
    assert!(r.drv.publish(&r.g), "the driver must kick");

    // With EVENT_IDX: avail_event is the next avail index to process.
    let mut r = Rig::new(8, |s| s.event_idx = true);
    r.drv.set_event_idx(true);
    add(&mut r);
    add(&mut r);
    r.drv.publish(&r.g);
    available(&mut r);
    pop(&mut r);
    assert!(r.dev.enable_notification(r.g.map.mem()));
    assert_eq!(r.drv.avail_event(&r.g), 1);
    pop(&mut r);
    assert!(!r.dev.enable_notification(r.g.map.mem()));
    assert_eq!(r.drv.avail_event(&r.g), 2);
    add(&mut r);
    assert!(r.drv.publish(&r.g));
}

#[test]
fn indices_hand_the_ring_over() {
    let mut r = Rig::new(8, |_| {});
    let heads: Vec<u16> = (0..3).map(|_| add(&mut r)).collect();
    r.drv.publish(&r.g);
    available(&mut r);
    for _ in 0..3 {
        pop(&mut r);
    }
    assert!(add_used(&mut r, heads[0], 1));
    signal(&mut r);
    assert_eq!(r.used_heads(), vec![(heads[0], 1)]);
    // Returned but not published when the worker stops.
    assert!(add_used(&mut r, heads[1], 2));
    let (next_avail, next_used) = r.dev.indices();
    assert_eq!((next_avail, next_used), (3, 2));

    // The next worker carries on from there.
    let mut setup = r.g.setup(&r.drv);
    setup.next_avail = next_avail;
    setup.next_used = next_used;
    r.dev = Ring::new(setup, 8).unwrap();
    let d = add(&mut r);
    r.drv.publish(&r.g);
    assert_eq!(available(&mut r), Some(1));
    assert_eq!(pop(&mut r), Some(d));
    assert!(add_used(&mut r, heads[2], 3));
    assert!(add_used(&mut r, d, 4));
    signal(&mut r);
    assert_eq!(
        r.used_heads(),
        vec![(heads[1], 2), (heads[2], 3), (d, 4)],
        "nothing lost or returned twice across the handover"
    );
    assert_eq!(r.dev.indices(), (4, 4));
}

#[test]
fn indices_wrap_at_65536() {
    let mut r = rig_at(65534, false);
    assert_eq!(batch(&mut r, 3), 1);
    assert_eq!(r.dev.indices(), (1, 1));
    assert_eq!(r.drv.used_idx(&r.g), 1);
}
