// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Self-tests of the harness, without the daemon: the driver-side ring writer and reader
//! checked against `virtio_queue::Queue` acting as the device over the same memory, and
//! the memfd layout (two regions of one memfd, the second at a non-zero offset).

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use common::guest::{bit, Guest, GuestConfig, RxLayout};
use common::memory::{TestMemory, HOLE_GPA, MIB, REGIONS};
use common::packet::{pattern, VnetHdr, VNET_HDR_LEN};
use common::ring::{
    need_event, Buf, Desc, SplitRing, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// A device-side queue over the driver's ring.
fn device_queue(mem: &TestMemory, ring: &SplitRing, event_idx: bool) -> Queue {
    let (desc, avail, used) = ring.addresses();
    let mut q = Queue::new(ring.size()).expect("queue");
    q.set_size(ring.size());
    q.try_set_desc_table_address(desc).expect("desc table");
    q.try_set_avail_ring_address(avail).expect("avail ring");
    q.try_set_used_ring_address(used).expect("used ring");
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(&mem.mem), "device considers the ring invalid");
    q
}

fn no_ctx() -> String {
    String::new()
}

/// (addr, len, write) of every descriptor of the next chain the device pops.
fn pop_chain(q: &mut Queue, mem: &TestMemory) -> (u16, Vec<(u64, u32, bool)>) {
    let chain = q
        .pop_descriptor_chain(&mem.mem)
        .expect("the device sees a chain");
    let head = chain.head_index();
    let descs = chain
        .map(|d| (d.addr().0, d.len(), d.is_write_only()))
        .collect();
    (head, descs)
}

#[test]
fn two_regions_share_one_memfd_at_their_offsets() {
    let mem = TestMemory::new();
    for (i, r) in REGIONS.iter().enumerate() {
        let info = mem.region_info(i);
        assert_eq!(info.guest_phys_addr, r.gpa);
        assert_eq!(info.mmap_offset, r.file_offset);
        assert_eq!(info.memory_size, r.size);
    }
    assert_ne!(mem.region_info(1).mmap_offset, 0);
    // A byte written at a guest address of region 1 is at region 1's offset in the memfd.
    let data = pattern(7, 64);
    let gpa = REGIONS[1].gpa + 4096;
    mem.write(gpa, &data);
    let mut back = vec![0u8; 64];
    mem.file()
        .read_at(&mut back, REGIONS[1].file_offset + 4096)
        .expect("pread");
    assert_eq!(back, data);
    let inode = |i: usize| {
        std::fs::metadata(format!("/proc/self/fd/{}", mem.region_info(i).mmap_handle))
            .expect("stat region fd")
            .ino()
    };
    assert_eq!(inode(0), inode(1), "both regions are the same memfd");
    // The hole is in no region.
    assert!(mem.mem.read_obj::<u8>(GuestAddress(HOLE_GPA)).is_err());
    // Allocations stay in their region.
    let a = mem.alloc(1, MIB, 4096);
    assert!(a.0 >= REGIONS[1].gpa && a.0 + MIB <= REGIONS[1].gpa + REGIONS[1].size);
}

#[test]
fn direct_chains_reach_the_device_and_come_back() {
    let mem = TestMemory::new();
    let mut ring = SplitRing::new(&mem, 0, 64);
    let mut q = device_queue(&mem, &ring, false);
    let a = mem.alloc(0, 100, 64);
    let b = mem.alloc(1, 200, 64);
    let c = mem.alloc(1, 300, 64);
    let chains = [
        vec![Buf::ro(a, 100)],
        vec![Buf::ro(a, 12), Buf::ro(b, 200), Buf::wo(c, 300)],
    ];
    let heads: Vec<u16> = chains.iter().map(|c| ring.add_chain(&mem, c)).collect();
    assert_eq!(ring.free_descriptors(), 60);
    assert!(ring.publish(&mem), "a fresh device wants kicks");
    for (chain, head) in chains.iter().zip(&heads) {
        let (h, descs) = pop_chain(&mut q, &mem);
        assert_eq!(h, *head);
        let want: Vec<_> = chain.iter().map(|b| (b.addr, b.len, b.write)).collect();
        assert_eq!(descs, want);
    }
    assert!(q.pop_descriptor_chain(&mem.mem).is_none());
    q.add_used(&mem.mem, heads[1], 17).expect("add_used");
    q.add_used(&mem.mem, heads[0], 0).expect("add_used");
    let used = ring.take_used(&mem, &no_ctx);
    assert_eq!(used.len(), 2);
    assert_eq!((used[0].id, used[0].len), (heads[1], 17));
    assert_eq!(used[0].bufs, chains[1]);
    assert_eq!((used[1].id, used[1].len), (heads[0], 0));
    assert_eq!(ring.free_descriptors(), 64);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn indirect_chains_reach_the_device() {
    let mem = TestMemory::new();
    let mut ring = SplitRing::new(&mem, 0, 64);
    let mut q = device_queue(&mem, &ring, false);
    let h = mem.alloc(0, 12, 16);
    let f = mem.alloc(1, 1000, 64);
    let table = mem.alloc(0, 32, 16);
    let bufs = [Buf::ro(h, 12), Buf::ro(f, 1000)];
    let head = ring.add_indirect(&mem, table, &bufs);
    assert_eq!(
        ring.free_descriptors(),
        63,
        "an indirect chain takes one slot"
    );
    ring.publish(&mem);
    let (got_head, descs) = pop_chain(&mut q, &mem);
    assert_eq!(got_head, head);
    assert_eq!(descs, vec![(h.0, 12, false), (f.0, 1000, false)]);
    q.add_used(&mem.mem, head, 0).expect("add_used");
    let used = ring.take_used(&mem, &no_ctx);
    assert_eq!(used[0].bufs, bufs);
}

#[test]
fn indices_wrap_around_the_ring_and_the_u16_space() {
    let mem = TestMemory::new();
    let mut ring = SplitRing::new(&mem, 0, 64);
    let mut q = device_queue(&mem, &ring, false);
    let buf = mem.alloc(1, 64, 64);
    // 70000 chains: slots wrap ~1100 times and the free-running indices wrap 2^16.
    for i in 0..70_000u32 {
        let len = 1 + i % 64;
        let head = ring.add_chain(&mem, &[Buf::ro(buf, usize::try_from(len).unwrap())]);
        ring.publish(&mem);
        let (h, descs) = pop_chain(&mut q, &mem);
        assert_eq!((h, descs[0].1), (head, len));
        q.add_used(&mem.mem, h, len).expect("add_used");
        let used = ring.take_used(&mem, &no_ctx);
        assert_eq!((used.len(), used[0].id, used[0].len), (1, head, len));
    }
    assert_eq!(ring.avail_idx(), u16::try_from(70_000u32 % 65_536).unwrap());
    assert_eq!(ring.last_used(), ring.avail_idx());
}

#[test]
fn event_idx_used_event_and_avail_event() {
    let mem = TestMemory::new();
    let mut ring = SplitRing::new(&mem, 0, 64);
    ring.set_event_idx(true);
    let mut q = device_queue(&mem, &ring, true);
    let buf = mem.alloc(1, 64, 64);
    for _ in 0..4 {
        ring.add_chain(&mem, &[Buf::ro(buf, 64)]);
    }
    ring.publish(&mem);
    // The device drains and re-enables notifications: avail_event = next avail (4).
    let mut heads = Vec::new();
    while let Some(c) = q.pop_descriptor_chain(&mem.mem) {
        heads.push(c.head_index());
    }
    assert!(!q.enable_notification(&mem.mem).expect("enable"));
    assert_eq!(ring.avail_event(&mem), 4);
    ring.add_chain(&mem, &[Buf::ro(buf, 64)]);
    assert!(ring.publish(&mem), "crossing avail_event needs a kick");
    ring.add_chain(&mem, &[Buf::ro(buf, 64)]);
    assert!(!ring.publish(&mem), "beyond avail_event no kick is needed");

    // used_event far ahead: the device must not notify.
    ring.set_used_event(&mem, ring.last_used().wrapping_add(100));
    q.add_used(&mem.mem, heads[0], 0).expect("add_used");
    assert!(!q.needs_notification(&mem.mem).expect("needs_notification"));
    // used_event = what we consumed: the next used entry notifies.
    ring.take_used(&mem, &no_ctx);
    ring.set_used_event(&mem, ring.last_used());
    q.add_used(&mem.mem, heads[1], 0).expect("add_used");
    assert!(q.needs_notification(&mem.mem).expect("needs_notification"));
    assert!(need_event(5, 6, 5) && !need_event(5, 7, 6) && need_event(65535, 0, 65534));
}

#[test]
fn no_notify_flag_without_event_idx() {
    let mem = TestMemory::new();
    let mut ring = SplitRing::new(&mem, 0, 64);
    let mut q = device_queue(&mem, &ring, false);
    let buf = mem.alloc(1, 64, 64);
    q.disable_notification(&mem.mem).expect("disable");
    assert_eq!(
        ring.used_flags(&mem) & VRING_USED_F_NO_NOTIFY,
        VRING_USED_F_NO_NOTIFY
    );
    ring.add_chain(&mem, &[Buf::ro(buf, 64)]);
    assert!(!ring.publish(&mem));
    q.enable_notification(&mem.mem).expect("enable");
    ring.add_chain(&mem, &[Buf::ro(buf, 64)]);
    assert!(ring.publish(&mem));
}

#[test]
fn raw_hostile_shapes_are_written_as_asked() {
    let mem = TestMemory::new();
    let mut ring = SplitRing::new(&mem, 0, 64);
    let mut q = device_queue(&mem, &ring, false);
    let buf = mem.alloc(1, 64, 64);
    // A two-descriptor loop.
    let head = ring.add_raw(
        &mem,
        &[
            Desc {
                addr: buf.0,
                len: 12,
                flags: VRING_DESC_F_NEXT,
                next: 1,
            },
            Desc {
                addr: buf.0,
                len: 52,
                flags: VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
                next: 0,
            },
        ],
    );
    ring.publish(&mem);
    let (desc_table, _, _) = ring.addresses();
    let d0 = SplitRing::read_desc(&mem, desc_table, head);
    let d1 = SplitRing::read_desc(&mem, desc_table, d0.next);
    assert_eq!(d1.next, head, "the loop closes on the head");
    assert_eq!(d1.flags, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE);
    // virtio-queue stops a looping chain after queue-size descriptors.
    let (_, descs) = pop_chain(&mut q, &mem);
    assert!(descs.len() <= 64);
    // An avail index more than the queue size ahead is refused by the device model.
    ring.set_avail_idx_raw(&mem, ring.avail_idx().wrapping_add(65));
    assert!(q.iter(&mem.mem).is_err());
}

#[test]
fn mergeable_rx_packets_are_gathered_across_buffers() {
    let mut g = Guest::new(GuestConfig::default());
    g.acked = bit(VIRTIO_NET_F_MRG_RXBUF);
    let frame = pattern(3, 5000);
    for i in 0..4 {
        let layout = if i % 2 == 0 {
            RxLayout::Single
        } else {
            RxLayout::Split
        };
        g.add_rx(0, 2048, layout);
    }
    g.kick_rx(0);
    // Device side: header + 5000 bytes over three 2048-byte buffers.
    let mut q = device_queue(&g.mem, &g.pairs[0].rx.ring, false);
    let mut wire = VnetHdr {
        num_buffers: 3,
        ..Default::default()
    }
    .to_bytes()
    .to_vec();
    wire.extend_from_slice(&frame);
    let mut off = 0;
    for _ in 0..3 {
        let chain = q.pop_descriptor_chain(&g.mem.mem).expect("buffer");
        let head = chain.head_index();
        let mut written = 0u32;
        for d in chain {
            let n = (wire.len() - off).min(usize::try_from(d.len()).unwrap());
            g.mem.write(d.addr().0, &wire[off..off + n]);
            off += n;
            written += u32::try_from(n).unwrap();
        }
        q.add_used(&g.mem.mem, head, written).expect("add_used");
    }
    assert_eq!(off, wire.len());
    g.pairs[0].rx.call.write(1).expect("call");
    let p = g.recv(0, 1, Duration::from_secs(1));
    assert_eq!(p[0].buffers, 3);
    assert_eq!(p[0].hdr.num_buffers, 3);
    assert_eq!(p[0].frame.len(), frame.len());
    assert!(p[0].frame == frame, "gathered frame differs");
    assert_eq!(VNET_HDR_LEN, 12);
    assert!(g.pairs[0].rx.was_called());
    assert_eq!(g.pairs[0].rx.calls, 1);
}
