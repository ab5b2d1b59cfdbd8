// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The seed corpus: a few well-formed inputs per target that reach deep into the code
//! (rings with real chains, a QEMU-like vhost-user setup), from which the fuzzer
//! mutates. `examples/seeds.rs` writes them under `corpus/<target>/`.

use vhost_netmem::virtio::features::{
    self, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vhost_netmem::virtio::VirtioNetHdr;

use crate::input::Writer;
use crate::rig::RingInput;
use crate::vhost::{encode, FdSpec, Message, FLAG_NEED_REPLY};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

fn bit(b: u32) -> u64 {
    1 << b
}

/// A guest memory image with one split ring in it.
#[derive(Debug, Clone)]
pub struct RingImage {
    /// The bytes from guest-physical 0.
    pub image: Vec<u8>,
    size: u16,
    desc: u64,
    avail: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl RingImage {
    /// A ring of `size` entries at `desc`/`avail` (the used ring is only written by
    /// the device) in an image of `len` bytes.
    pub fn new(size: u16, desc: u64, avail: u64, len: usize) -> Self {
        RingImage {
            image: vec![0; len],
            size,
            desc,
            avail,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Write `bytes` at `gpa`, growing the image if needed.
    pub fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let at = usize::try_from(gpa).expect("small gpa");
        if self.image.len() < at + bytes.len() {
            self.image.resize(at + bytes.len(), 0);
        }
        self.image[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Write descriptor `i` of the table at `table`.
    pub fn desc(&mut self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(table + 16 * u64::from(i), &d);
    }

    /// A chain of `bufs` (gpa, len, device-writable) in the main table; its head.
    pub fn chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            let last = k + 1 == bufs.len();
            let flags = if write { WRITE } else { 0 } | if last { 0 } else { NEXT };
            self.desc(self.desc, i, addr, len, flags, i + 1);
            self.next_desc += 1;
        }
        head
    }

    /// A chain of `bufs` in an indirect table at `table`; its head.
    pub fn indirect(&mut self, table: u64, bufs: &[(u64, u32, bool)]) -> u16 {
        let n = u16::try_from(bufs.len()).expect("short chain");
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let k = u16::try_from(k).expect("short chain");
            let flags = if write { WRITE } else { 0 } | if k + 1 == n { 0 } else { NEXT };
            self.desc(table, k, addr, len, flags, k + 1);
        }
        let head = self.next_desc;
        self.desc(self.desc, head, table, 16 * u32::from(n), INDIRECT, 0);
        self.next_desc += 1;
        head
    }

    /// Make `head` available.
    pub fn post(&mut self, head: u16) {
        let slot = self.avail_idx & (self.size - 1);
        self.write(self.avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let idx = self.avail_idx.to_le_bytes();
        self.write(self.avail + 2, &idx);
    }

    /// Write the avail ring's `used_event` (EVENT_IDX).
    pub fn used_event(&mut self, v: u16) {
        self.write(self.avail + 4 + 2 * u64::from(self.size), &v.to_le_bytes());
    }
}

fn frame(hdr: VirtioNetHdr, payload: usize) -> Vec<u8> {
    let mut v = hdr.to_bytes().to_vec();
    v.extend((0..payload).map(|i| u8::try_from(i % 256).unwrap_or(0)));
    v
}

fn tso4() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: vhost_netmem::virtio::header::VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: vhost_netmem::virtio::header::VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// Seeds of `virtio_net_hdr`: header, features, length.
pub fn virtio_net_hdr() -> Vec<(&'static str, Vec<u8>)> {
    let all = features::SUPPORTED;
    let mut bad_gso = VirtioNetHdr::default();
    bad_gso.gso_type = 3;
    let mut csum = VirtioNetHdr::default();
    csum.flags = 1;
    csum.csum_start = 14;
    csum.csum_offset = 6;
    let case = |h: VirtioNetHdr, f: u64, len: u32| {
        let mut w = Writer::default();
        w.bytes(&h.to_bytes()).u64(f).u32(len);
        w.0
    };
    vec![
        ("plain", case(VirtioNetHdr::default(), all, 60)),
        ("tso4", case(tso4(), all, 3000)),
        ("tso4-not-acked", case(tso4(), bit(VIRTIO_NET_F_CSUM), 3000)),
        ("csum", case(csum, bit(VIRTIO_NET_F_CSUM), 42)),
        ("ufo", case(bad_gso, all, 100)),
    ]
}

/// Seeds of `chain_walk`: layout, log2 size, table, head, flags, image.
pub fn chain_walk() -> Vec<(&'static str, Vec<u8>)> {
    let case = |layout: u8, head: u16, indirect: bool, r: &RingImage| {
        let mut w = Writer::default();
        w.u8(layout)
            .u8(4)
            .u32(0)
            .u16(head)
            .u8(u8::from(indirect))
            .bytes(&crate::patch::encode(&r.image));
        w.0
    };
    let mut direct = RingImage::new(16, 0, 0x100, 0x200);
    direct.chain(&[
        (0x1000, 12, false),
        (0x1100, 100, false),
        (0x1200, 64, true),
    ]);
    let mut ind = RingImage::new(16, 0, 0x100, 0x200);
    ind.indirect(0x400, &[(0x1000, 12, false), (0x8000 - 8, 16, false)]);
    let mut looped = RingImage::new(16, 0, 0x100, 0x200);
    looped.desc(0, 0, 0x1000, 10, NEXT, 1);
    looped.desc(0, 1, 0x1000, 10, NEXT, 0);
    vec![
        ("direct", case(0, 0, false, &direct)),
        ("indirect", case(1, 0, true, &ind)),
        ("loop", case(0, 0, false, &looped)),
    ]
}

const RING_SIZE: u16 = 16;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;

fn ring_input(layout: u8, features: u64, flags: u8, script: &[u8], r: &RingImage) -> Vec<u8> {
    RingInput {
        layout,
        size_log2: 4,
        desc: 0,
        avail: 0x100,
        used: 0x200,
        next_avail: 0,
        next_used: 0,
        features,
        flags,
        rounds: 1,
        mtu: 1500,
        script: script.to_vec(),
        image: crate::patch::encode(&r.image),
    }
    .encode()
}

/// Seeds of `tx_path`.
pub fn tx_path() -> Vec<(&'static str, Vec<u8>)> {
    let all = features::SUPPORTED;
    let mut seeds = Vec::new();

    let mut one = RingImage::new(RING_SIZE, DESC, AVAIL, 0x400);
    let f = frame(VirtioNetHdr::default(), 60);
    one.write(0x1000, &f);
    let h = one.chain(&[(0x1000, 72, false)]);
    one.post(h);
    seeds.push(("one-packet", ring_input(0, all, 0, &[], &one)));

    // Header in its own buffer, a TSO packet, an indirect chain; the uplink sends,
    // holds one in flight, blocks once.
    let mut mix = RingImage::new(RING_SIZE, DESC, AVAIL, 0x400);
    mix.write(0x1000, &VirtioNetHdr::default().to_bytes());
    mix.write(0x1100, &[0xaa; 60]);
    let a = mix.chain(&[(0x1000, 12, false), (0x1100, 60, false)]);
    let t = frame(tso4(), 3000);
    mix.write(0x2000, &t);
    let b = mix.chain(&[(0x2000, 1000, false), (0x2000 + 1000, 2012, false)]);
    mix.write(0x3000, &frame(VirtioNetHdr::default(), 100));
    let c = mix.indirect(0x800, &[(0x3000, 8, false), (0x3008, 104, false)]);
    for h in [a, b, c] {
        mix.post(h);
    }
    seeds.push((
        "mixed",
        ring_input(0, all, 2 | 4, &[0, 3, 4, 0, 1, 0], &mix),
    ));

    // Chains the path must refuse: a writable buffer, a zero-length one, a loop,
    // outside memory, shorter than the header.
    let mut bad = RingImage::new(RING_SIZE, DESC, AVAIL, 0x400);
    let w = bad.chain(&[(0x1000, 72, true)]);
    let z = bad.chain(&[(0x1000, 0, false)]);
    bad.desc(DESC, 5, 0x1000, 10, NEXT, 6);
    bad.desc(DESC, 6, 0x1000, 10, NEXT, 5);
    let out = 7;
    bad.desc(DESC, out, 0x10_0000, 72, 0, 0);
    let short = 8;
    bad.desc(DESC, short, 0x1000, 8, 0, 0);
    for h in [w, z, 5, out, short] {
        bad.post(h);
    }
    seeds.push(("refused", ring_input(0, all, 0, &[], &bad)));

    // A buffer across the boundary of two adjacent regions (layout 1), and EVENT_IDX.
    let mut across = RingImage::new(RING_SIZE, DESC, AVAIL, 0x8100);
    across.write(0x7ff0, &frame(VirtioNetHdr::default(), 100));
    let h = across.chain(&[(0x7ff0, 112, false)]);
    across.post(h);
    across.used_event(0);
    let ev = bit(VIRTIO_RING_F_EVENT_IDX) | all;
    seeds.push(("across-regions", ring_input(1, ev, 1 | 4, &[], &across)));
    seeds
}

/// Seeds of `rx_path`.
pub fn rx_path() -> Vec<(&'static str, Vec<u8>)> {
    let plain = bit(VIRTIO_F_VERSION_1);
    let mrg = plain | bit(VIRTIO_NET_F_MRG_RXBUF);
    let gso = mrg | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4);
    let pkt = |len: u16| {
        let mut v = vec![3u8];
        v.extend_from_slice(&len.to_le_bytes());
        v
    };
    let mut seeds = Vec::new();

    // Without MRG_RXBUF: one chain per packet; the third packet does not fit.
    let mut one = RingImage::new(RING_SIZE, DESC, AVAIL, 0x400);
    for k in 0..4u64 {
        let h = one.chain(&[(0x1000 + k * 0x800, 1526, true)]);
        one.post(h);
    }
    let script: Vec<u8> = [pkt(60), pkt(1526), pkt(2000), vec![0]].concat();
    seeds.push(("plain", ring_input(0, plain, 4, &script, &one)));

    // MRG_RXBUF: packets spread over several 512-byte chains (one of them indirect).
    let mut m = RingImage::new(RING_SIZE, DESC, AVAIL, 0x400);
    for k in 0..6u64 {
        let h = m.chain(&[(0x1000 + k * 0x200, 512, true)]);
        m.post(h);
    }
    let h = m.indirect(0x800, &[(0x2000, 12, true), (0x2100, 500, true)]);
    m.post(h);
    let script: Vec<u8> = [pkt(100), pkt(1200), vec![1], pkt(700), vec![0]].concat();
    seeds.push(("mrg", ring_input(0, mrg, 2 | 4, &script, &m)));

    // MRG_RXBUF with GUEST_TSO4: the stash wants 64 KiB, the ring holds less.
    let mut g = RingImage::new(RING_SIZE, DESC, AVAIL, 0x400);
    for k in 0..8u64 {
        let h = g.chain(&[(0x1000 + k * 0x800, 2048, true)]);
        g.post(h);
    }
    g.used_event(0);
    let script: Vec<u8> = [pkt(9000), vec![2, 0, 0], pkt(60)].concat();
    let ev = gso | bit(VIRTIO_RING_F_EVENT_IDX);
    seeds.push(("mrg-gso", ring_input(2, ev, 1 | 4, &script, &g)));

    // Chains the path must refuse.
    let mut bad = RingImage::new(RING_SIZE, DESC, AVAIL, 0x400);
    let r = bad.chain(&[(0x1000, 100, false)]);
    let s = bad.chain(&[(0x1000, 8, true)]);
    let o = bad.chain(&[(0x9000, 100, true)]);
    let ok = bad.chain(&[(0x1000, 1526, true)]);
    for h in [r, s, o, ok] {
        bad.post(h);
    }
    seeds.push(("refused", ring_input(2, plain, 0, &pkt(60), &bad)));
    seeds
}

// vhost-user request codes.
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;
const GET_CONFIG: u32 = 24;
const GET_MAX_MEM_SLOTS: u32 = 36;
const ADD_MEM_REG: u32 = 37;
const REM_MEM_REG: u32 = 38;
const SET_STATUS: u32 = 39;
const GET_STATUS: u32 = 40;

/// The frontend's address of guest-physical 0 in the seeds.
const USER_ADDR: u64 = 0x7f12_3400_0000;
/// Guest memory of the seeds: 64 KiB.
const MEM_PAGES: u16 = 16;

fn u64_body(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn state_body(index: u32, num: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(index).u32(num);
    w.0
}

fn region(gpa: u64, size: u64, user: u64, offset: u64) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(gpa).u64(size).u64(user).u64(offset);
    w.0
}

/// The guest memory of the vhost-user seeds: an RX ring (ring 0) with four posted
/// buffers at 0x0, a TX ring (ring 1) with one packet at 0x1000 (rings of 16).
fn vhost_memory() -> Vec<u8> {
    let mut r = RingImage::new(RING_SIZE, 0, 0x100, 0x2000);
    for k in 0..4u64 {
        let h = r.chain(&[(0x4000 + k * 0x800, 1526, true)]);
        r.post(h);
    }
    let mut t = RingImage::new(RING_SIZE, 0x1000, 0x1100, 0x2000);
    t.write(0x6000, &frame(VirtioNetHdr::default(), 60));
    let h = t.chain(&[(0x6000, 72, false)]);
    t.post(h);
    let mut image = r.image;
    image[0x1000..0x2000].copy_from_slice(&t.image[0x1000..0x2000]);
    image.resize(0x6000, 0);
    image.extend_from_slice(&frame(VirtioNetHdr::default(), 60));
    image
}

fn memfd() -> FdSpec {
    FdSpec::Memfd {
        pages: MEM_PAGES,
        content: crate::patch::encode(&vhost_memory()),
    }
}

fn ring_setup(index: u32, base: u64) -> Vec<Message> {
    let mut addr = Writer::default();
    addr.u32(index)
        .u32(0)
        .u64(USER_ADDR + base)
        .u64(USER_ADDR + base + 0x200)
        .u64(USER_ADDR + base + 0x100)
        .u64(0);
    vec![
        Message::new(SET_VRING_NUM, 0, &state_body(index, 16), vec![]),
        Message::new(SET_VRING_BASE, 0, &state_body(index, 0), vec![]),
        Message::new(SET_VRING_ADDR, 0, &addr.0, vec![]),
        Message::new(
            SET_VRING_KICK,
            0,
            &u64_body(u64::from(index)),
            vec![FdSpec::EventFd(1)],
        ),
        Message::new(
            SET_VRING_CALL,
            0,
            &u64_body(u64::from(index)),
            vec![FdSpec::EventFd(0)],
        ),
    ]
}

fn negotiation(features: u64) -> Vec<Message> {
    let proto = 0x1 | 0x8 | 0x200 | 0x8000 | 0x10000; // MQ, REPLY_ACK, CONFIG, MEM_SLOTS, STATUS
    let mut v = vec![
        Message::new(GET_FEATURES, 0, &[], vec![]),
        Message::new(GET_PROTOCOL_FEATURES, 0, &[], vec![]),
        Message::new(SET_PROTOCOL_FEATURES, 0, &u64_body(proto), vec![]),
        Message::new(GET_QUEUE_NUM, 0, &[], vec![]),
        Message::new(GET_MAX_MEM_SLOTS, 0, &[], vec![]),
        Message::new(SET_OWNER, 0, &[], vec![]),
    ];
    // QEMU 7.2 enables every ring before SET_FEATURES.
    for i in 0..4 {
        v.push(Message::new(SET_VRING_ENABLE, 0, &state_body(i, 1), vec![]));
    }
    v.push(Message::new(
        SET_FEATURES,
        FLAG_NEED_REPLY,
        &u64_body(features),
        vec![],
    ));
    v
}

/// Seeds of `vhost_user`.
pub fn vhost_user() -> Vec<(&'static str, Vec<u8>)> {
    let features = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VHOST_USER_F_PROTOCOL_FEATURES);
    let mut seeds = Vec::new();

    // QEMU-like: negotiation, SET_MEM_TABLE, both rings of pair 0, status, config,
    // then the stop sequence (GET_VRING_BASE).
    let mut qemu = negotiation(features);
    let mut table = Writer::default();
    table
        .u32(1)
        .u32(0)
        .bytes(&region(0, u64::from(MEM_PAGES) * 4096, USER_ADDR, 0));
    qemu.push(Message::new(
        SET_MEM_TABLE,
        FLAG_NEED_REPLY,
        &table.0,
        vec![memfd()],
    ));
    qemu.extend(ring_setup(0, 0));
    qemu.extend(ring_setup(1, 0x1000));
    let mut cfg = Writer::default();
    cfg.u32(0).u32(12).u32(0).bytes(&[0; 12]);
    qemu.push(Message::new(GET_CONFIG, 0, &cfg.0, vec![]));
    qemu.push(Message::new(SET_STATUS, 0, &u64_body(0xf), vec![]));
    qemu.push(Message::new(GET_STATUS, 0, &[], vec![]));
    qemu.push(Message::new(GET_VRING_BASE, 0, &state_body(0, 0), vec![]));
    qemu.push(Message::new(GET_VRING_BASE, 0, &state_body(1, 0), vec![]));
    seeds.push(("qemu-setup", encode(&qemu)));

    // Memory slots: ADD_MEM_REG (twice, as QEMU does per vhost device), rings on pair
    // 1, then REM_MEM_REG while they run.
    let mut slots = negotiation(features & !bit(VIRTIO_RING_F_EVENT_IDX));
    let mut one = Writer::default();
    one.u64(0)
        .bytes(&region(0, u64::from(MEM_PAGES) * 4096, USER_ADDR, 0));
    for _ in 0..2 {
        slots.push(Message::new(
            ADD_MEM_REG,
            FLAG_NEED_REPLY,
            &one.0,
            vec![memfd()],
        ));
    }
    slots.extend(ring_setup(2, 0));
    slots.extend(ring_setup(3, 0x1000));
    slots.push(Message::new(REM_MEM_REG, FLAG_NEED_REPLY, &one.0, vec![]));
    slots.push(Message::new(REM_MEM_REG, FLAG_NEED_REPLY, &one.0, vec![]));
    seeds.push(("mem-slots", encode(&slots)));

    // Without protocol features (rings count as enabled); two regions, the second at a
    // non-zero mmap offset.
    let mut legacy = vec![
        Message::new(GET_FEATURES, 0, &[], vec![]),
        Message::new(SET_OWNER, 0, &[], vec![]),
        Message::new(SET_FEATURES, 0, &u64_body(bit(VIRTIO_F_VERSION_1)), vec![]),
    ];
    let mut two = Writer::default();
    two.u32(2)
        .u32(0)
        .bytes(&region(0, 0x8000, USER_ADDR, 0))
        .bytes(&region(0x8000, 0x8000, USER_ADDR + 0x8000, 0x8000));
    legacy.push(Message::new(
        SET_MEM_TABLE,
        0,
        &two.0,
        vec![memfd(), memfd()],
    ));
    legacy.extend(ring_setup(1, 0x1000));
    seeds.push(("legacy", encode(&legacy)));
    seeds
}

/// Every target's seeds: (target, [(name, bytes)]).
pub fn all() -> Vec<(&'static str, Vec<(&'static str, Vec<u8>)>)> {
    vec![
        ("virtio_net_hdr", virtio_net_hdr()),
        ("chain_walk", chain_walk()),
        ("tx_path", tx_path()),
        ("rx_path", rx_path()),
        ("vhost_user", vhost_user()),
    ]
}
