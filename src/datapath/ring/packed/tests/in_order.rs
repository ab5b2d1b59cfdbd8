// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! VIRTIO_F_IN_ORDER: device-readable chains returned empty in ring order go back
//! under one used descriptor.

use super::*;

/// A rig with VIRTIO_F_IN_ORDER negotiated on both sides.
fn in_order_rig(size: u16, event_idx: bool) -> Rig {
    let mut r = Rig::new(size, |_| {});
    r.drv.set_in_order(true);
    let mut s = r.drv.setup();
    s.event_idx = event_idx;
    r.dev = PackedRing::new(s).unwrap();
    r
}

#[test]
fn in_order_read_only_chains_are_returned_with_one_used_descriptor() {
    let mut r = in_order_rig(8, false);
    let ids = [r.add(1), r.add(2), r.add(1), r.add(3)];
    assert_eq!(r.available(), Some(4));
    for &id in &ids {
        assert_eq!(r.pop().map(|p| p.id), Some(id));
    }
    let before: Vec<PDesc> = (0..8).map(|i| r.drv.read_desc(&r.g, i)).collect();
    for &id in &ids {
        assert!(r.add_used(id, 0));
    }
    // Nothing written until the batch ends.
    let now: Vec<PDesc> = (0..8).map(|i| r.drv.read_desc(&r.g, i)).collect();
    assert_eq!(now, before);
    assert_eq!(
        r.dev.indices().used,
        RingPosition::START,
        "the batch is not counted yet"
    );
    r.signal();
    assert_eq!(r.calls(), 1);
    // One used descriptor, at the batch's first slot, with the last id.
    let slot0 = r.drv.read_desc(&r.g, 0);
    assert_eq!((slot0.id, slot0.len), (ids[3], 0));
    assert_eq!(slot0.flags, DESC_F_AVAIL | DESC_F_USED);
    let now: Vec<PDesc> = (1..8).map(|i| r.drv.read_desc(&r.g, i)).collect();
    assert_eq!(now, before[1..], "the other slots are skipped, not written");
    assert_eq!(r.used(), ids.iter().map(|&id| (id, 0)).collect::<Vec<_>>());
    same_place(&r);
    // Again, across the end of the ring.
    for _ in 0..3 {
        let ids = [r.add(2), r.add(1), r.add(2)];
        for &id in &ids {
            assert_eq!(r.pop().map(|p| p.id), Some(id));
            assert!(r.add_used(id, 0));
        }
        r.signal();
        assert_eq!(r.used(), ids.iter().map(|&id| (id, 0)).collect::<Vec<_>>());
        same_place(&r);
    }
    assert_eq!(r.dev.fault(), None);
}

#[test]
fn in_order_batches_end_at_a_chain_that_cannot_join() {
    let mut r = in_order_rig(8, false);
    let b = r.buf;
    let tx = [r.add(1), r.add(1)];
    // A device-writable chain (RX): its length matters, it is written on its own.
    let rx = r.drv.add_chain(
        &r.g,
        &[Buf {
            addr: b,
            len: 64,
            write: true,
        }],
    );
    let tx2 = r.add(1);
    for _ in 0..4 {
        assert!(r.pop().is_some());
    }
    assert!(r.add_used(tx[0], 0));
    assert!(r.add_used(tx[1], 0));
    assert!(r.add_used(rx, 0), "written, even empty");
    // A chain returned with bytes written is not batched either.
    assert!(r.add_used(tx2, 5));
    r.signal();
    let used = r.drv.take_used(&r.g);
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(tx[0], 0), (tx[1], 0), (rx, 0), (tx2, 5)]
    );
    // Three used descriptors: the batch of two, rx, tx2.
    // The batch at slot 0 skips slot 1.
    let slots: Vec<u16> = [0, 2, 3].map(|i| r.drv.read_desc(&r.g, i).id).to_vec();
    assert_eq!(slots, [tx[1], rx, tx2]);
    assert_eq!(r.drv.read_desc(&r.g, 1).flags & DESC_F_USED, 0, "skipped");
    same_place(&r);

    // Out of order (a caller that breaks its promise): each is written on its own.
    let a = r.add(1);
    let c = r.add(1);
    assert!(r.pop().is_some());
    assert!(r.pop().is_some());
    assert!(r.add_used(c, 0));
    assert!(r.add_used(a, 0));
    r.signal();
    let at = r.dev.indices().used.index;
    assert_eq!(r.drv.read_desc(&r.g, at - 2).id, c);
    assert_eq!(r.drv.read_desc(&r.g, at - 1).id, a);
}

#[test]
fn in_order_batches_count_every_skipped_descriptor_for_event_idx() {
    let mut r = in_order_rig(8, true);
    assert_eq!(r.round(1, 0), 1, "first decision");
    // The event at (3, wrap 1): inside a batch of chains at 1, 2-3, 4.
    r.drv.set_driver_event(
        &r.g,
        RingPosition {
            index: 3,
            wrap: true,
        }
        .word(),
        EVENT_FLAGS_DESC,
    );
    let ids = [r.add(1), r.add(2), r.add(1)];
    for &id in &ids {
        assert!(r.pop().is_some());
        assert!(r.add_used(id, 0));
    }
    r.signal();
    assert_eq!(r.calls(), 1);
    assert_eq!(r.used().len(), 3);
    same_place(&r);
}
