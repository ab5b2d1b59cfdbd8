// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Live migration, the backend's side: the dirty log (every byte the backend writes
//! into guest memory while LOG_ALL is acked has its page's bit set, and pages whose bits
//! stay clear are untouched), a bad log refused without disturbing anything, the RARP
//! announcement, and the features a migrating frontend needs.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::guest::{bit, Guest, GuestConfig, TxLayout, BASE_FEATURES};
use common::memory::REGIONS;
use common::packet::{guest_frames, peer_frames, VnetHdr, ETH_P_TEST, GUEST_MAC};
use common::raw::memfd;
use common::rig::Rig;
use common::ring::Used;
use common::{connection::wanted_protocol, TIMEOUT};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserDirtyLogRegion};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MRG_RXBUF};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

const PAGE: u64 = 4096;
const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
/// VHOST_VRING_F_LOG in SET_VRING_ADDR's flags.
const VRING_F_LOG: u32 = 1;

/// A guest whose driver writes nothing while the backend works (no EVENT_IDX, so no
/// used_event updates; no indirect tables, so every page it wrote is known), asking for
/// LOG_SHMFD.
fn quiet_guest() -> GuestConfig {
    GuestConfig {
        features: BASE_FEATURES
            & !bit(VIRTIO_RING_F_EVENT_IDX)
            & !bit(VIRTIO_RING_F_INDIRECT_DESC)
            & !bit(VIRTIO_NET_F_MRG_RXBUF),
        protocol: wanted_protocol() | VhostUserProtocolFeatures::LOG_SHMFD,
        ..GuestConfig::default()
    }
}

/// The end of the guest-physical memory the daemon knows.
fn guest_end(g: &Guest) -> u64 {
    g.cfg
        .mem_regions
        .iter()
        .map(|&i| REGIONS[i].gpa + REGIONS[i].size)
        .max()
        .unwrap()
}

/// A dirty log for `end` bytes of guest-physical memory, as QEMU sizes it (64-bit words).
fn new_log(end: u64) -> (File, u64) {
    let bytes = (end / PAGE).div_ceil(64) * 8;
    (memfd(bytes), bytes)
}

fn region(log: &File, size: u64, offset: u64) -> VhostUserDirtyLogRegion {
    VhostUserDirtyLogRegion {
        mmap_size: size,
        mmap_offset: offset,
        mmap_handle: log.as_raw_fd(),
    }
}

fn log_bits(log: &File, bytes: u64) -> Vec<u8> {
    let mut b = vec![0u8; usize::try_from(bytes).unwrap()];
    log.read_exact_at(&mut b, 0).unwrap();
    b
}

fn dirty(bits: &[u8], gpa: u64) -> bool {
    let page = gpa / PAGE;
    bits[usize::try_from(page / 8).unwrap()] & (1 << (page % 8)) != 0
}

/// Every page of the guest's memory the daemon knows, by guest-physical address.
fn snapshot(g: &Guest) -> Vec<(u64, Vec<u8>)> {
    let mut pages = Vec::new();
    for &i in &g.cfg.mem_regions {
        let r = REGIONS[i];
        let all = g.mem.read(r.gpa, usize::try_from(r.size).unwrap());
        let mut gpa = r.gpa;
        for chunk in all.chunks(usize::try_from(PAGE).unwrap()) {
            pages.push((gpa, chunk.to_vec()));
            gpa += PAGE;
        }
    }
    pages
}

fn pages_of(addr: u64, len: u64, into: &mut std::collections::HashSet<u64>) {
    if len == 0 {
        return;
    }
    let mut p = addr / PAGE * PAGE;
    while p < addr + len {
        into.insert(p);
        p += PAGE;
    }
}

/// Turn logging on as QEMU does when a migration starts: SET_LOG_BASE, SET_FEATURES
/// with LOG_ALL, every ring's address again with VHOST_VRING_F_LOG.
fn start_logging(r: &mut Rig, log: &File, bytes: u64) {
    let acked = r.g.acked;
    let rings: Vec<_> = (0..r.g.vrings())
        .map(|i| {
            let ring = &r.g.vq(i).ring;
            let mut cd = ring.config_data(&r.g.mem);
            cd.flags = VRING_F_LOG;
            cd.log_addr = Some(ring.addresses().2 .0);
            cd
        })
        .collect();
    let c = r.conn();
    c.fe.set_log_base(0, Some(region(log, bytes, 0)))
        .expect("SET_LOG_BASE");
    c.fe.set_features(acked | LOG_ALL)
        .expect("SET_FEATURES with LOG_ALL");
    for (i, cd) in rings.iter().enumerate() {
        c.fe.set_vring_addr(i, cd)
            .expect("SET_VRING_ADDR with F_LOG");
    }
}

#[test]
fn every_backend_write_is_logged_and_pages_left_clear_are_untouched() {
    let mut r = Rig::loopback(quiet_guest(), &[]);
    assert_ne!(r.conn().offered & LOG_ALL, 0, "LOG_ALL offered");
    assert!(r
        .conn()
        .protocol
        .contains(VhostUserProtocolFeatures::LOG_SHMFD));
    let (log, bytes) = new_log(guest_end(&r.g));
    start_logging(&mut r, &log, bytes);
    let before = snapshot(&r.g);

    // RX buffers, then TX frames the loopback uplink turns into RX packets.
    for i in 0..8 {
        let layout = if i % 2 == 0 {
            common::guest::RxLayout::Single
        } else {
            common::guest::RxLayout::Split
        };
        r.g.add_rx(0, 2048, layout);
    }
    r.g.kick_rx(0);
    let frames = guest_frames(3000, 8, 60, 1514);
    for (i, f) in frames.iter().enumerate() {
        let layout = if i % 2 == 0 {
            TxLayout::Split
        } else {
            TxLayout::Single
        };
        r.g.add_tx(0, VnetHdr::default(), f, layout);
    }
    r.g.kick_tx(0);
    let tx_used: Vec<Used> = r.g.wait_tx(0, frames.len());
    let rx_used: Vec<Used> = r.g.wait_rx_used(0, frames.len());
    let after = snapshot(&r.g);
    let bits = log_bits(&log, bytes);

    // Each kind of write the backend made has its page's bit.
    for u in &rx_used {
        let mut left = u64::from(u.len);
        for b in u.bufs.iter().filter(|b| b.write) {
            let n = left.min(u64::from(b.len));
            let mut p = b.addr / PAGE * PAGE;
            while p < b.addr + n {
                assert!(dirty(&bits, p), "RX data page {p:#x} not logged");
                p += PAGE;
            }
            left -= n;
        }
    }
    for i in 0..2 {
        let used = r.g.vq(i).ring.addresses().2 .0;
        assert!(
            dirty(&bits, used),
            "used ring of vring {i} at {used:#x} not logged"
        );
    }

    // The converse: a page that changed is either one the guest wrote (its rings'
    // descriptor and avail pages, its buffers) or logged.
    let mut guest_wrote = std::collections::HashSet::new();
    for i in 0..2 {
        let (desc, avail, _) = r.g.vq(i).ring.addresses();
        let size = u64::from(r.g.vq(i).ring.size());
        pages_of(desc.0, 16 * size, &mut guest_wrote);
        pages_of(avail.0, 6 + 2 * size, &mut guest_wrote);
    }
    for u in tx_used.iter().chain(&rx_used) {
        for b in &u.bufs {
            pages_of(b.addr, u64::from(b.len), &mut guest_wrote);
        }
    }
    let mut changed = 0;
    for ((gpa, a), (_, b)) in before.iter().zip(&after) {
        if a != b {
            changed += 1;
            assert!(
                guest_wrote.contains(gpa) || dirty(&bits, *gpa),
                "page {gpa:#x} changed but is not in the dirty log{}",
                r.g.log().context()
            );
        }
    }
    assert!(changed > 0, "nothing changed: the traffic did not happen");

    // Logging off: nothing more is logged.
    log.write_all_at(&vec![0u8; usize::try_from(bytes).unwrap()], 0)
        .unwrap();
    let acked = r.g.acked;
    r.conn()
        .fe
        .set_features(acked)
        .expect("SET_FEATURES without LOG_ALL");
    r.g.loopback_roundtrip(0, &guest_frames(3100, 4, 60, 600));
    assert!(
        log_bits(&log, bytes).iter().all(|&b| b == 0),
        "pages logged with LOG_ALL off"
    );
}

#[test]
fn a_bad_dirty_log_is_refused_and_nothing_else_is_disturbed() {
    let mut r = Rig::loopback(quiet_guest(), &[]);
    let end = guest_end(&r.g);
    let (log, bytes) = new_log(end);
    let acked = r.g.acked;
    {
        let c = r.conn();
        // Too small for the guest memory, then beyond its file: each is answered with
        // an empty log region, which rust-vmm's frontend reports as an error (QEMU
        // checks only the reply's request code), the connection stays in step and
        // logging does not start...
        assert!(c.fe.set_log_base(0, Some(region(&log, 8, 0))).is_err());
        assert!(c
            .fe
            .set_log_base(0, Some(region(&log, bytes, bytes)))
            .is_err());
        // ...so turning LOG_ALL on is refused: the migration cannot go on unlogged.
        assert!(c.fe.set_features(acked | LOG_ALL).is_err());
        assert_eq!(c.fe.get_queue_num().expect("GET_QUEUE_NUM"), 2, "in step");
    }
    r.d.assert_running("after bad dirty logs");
    r.g.loopback_roundtrip(0, &guest_frames(4000, 6, 60, 1514));
    assert!(
        log_bits(&log, bytes).iter().all(|&b| b == 0),
        "a refused log was written"
    );
    for why in [
        "covers guest memory up to",
        "lies outside its",
        "acked LOG_ALL without a dirty log",
    ] {
        r.d.wait_stderr(why, TIMEOUT);
    }
}

#[test]
fn set_log_base_without_log_shmfd_is_refused_without_a_reply() {
    // Without LOG_SHMFD the frontend sends the old form and waits for no reply: the
    // refusal must not put a stray reply in front of the next request's.
    let cfg = GuestConfig {
        protocol: wanted_protocol(),
        ..quiet_guest()
    };
    let mut r = Rig::loopback(cfg, &[]);
    // The old form: a u64, no fd, no NEED_REPLY.
    r.conn().send_raw(6, 1, 8, &0u64.to_le_bytes());
    let queues = r.conn().fe.get_queue_num().expect("GET_QUEUE_NUM after it");
    assert_eq!(
        queues, 2,
        "the reply after a refused SET_LOG_BASE is its own"
    );
    r.g.loopback_roundtrip(0, &guest_frames(4100, 4, 60, 1514));
}

#[test]
fn guest_announce_is_offered() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    assert_ne!(
        r.conn().offered & bit(VIRTIO_NET_F_GUEST_ANNOUNCE),
        0,
        "GUEST_ANNOUNCE offered (QEMU then has the guest announce itself)"
    );
    assert!(r
        .conn()
        .protocol_offered
        .contains(VhostUserProtocolFeatures::RARP));
}

const REQ_SEND_RARP: u32 = 19;
const ETH_P_RARP: u16 = 0x8035;

fn mac_u64(mac: [u8; 6]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac);
    b
}

#[test]
fn send_rarp_broadcasts_the_guest_mac_out_of_the_tap() {
    let test = "send_rarp_broadcasts_the_guest_mac_out_of_the_tap";
    let cfg = GuestConfig {
        protocol: wanted_protocol() | VhostUserProtocolFeatures::RARP,
        ..GuestConfig::default()
    };
    let Some(mut r) = Rig::on_tap(test, cfg, "vnmrarp0") else {
        return;
    };
    let cap = r.ns().packet_socket("vnmrarp0", ETH_P_RARP, false);
    r.conn().send_raw(REQ_SEND_RARP, 1, 8, &mac_u64(GUEST_MAC));
    let got = cap
        .recv(TIMEOUT)
        .unwrap_or_else(|| r.d.fail("no RARP frame on the TAP after SEND_RARP"));
    let mut want = vec![0xff; 6];
    want.extend_from_slice(&GUEST_MAC);
    want.extend_from_slice(&[0x80, 0x35, 0, 1, 8, 0, 6, 4, 0, 3]);
    want.extend_from_slice(&GUEST_MAC);
    want.extend_from_slice(&[0; 4]);
    want.extend_from_slice(&GUEST_MAC);
    want.resize(60, 0);
    common::packet::assert_bytes(&got, &want, "the RARP announcement");
    // The ring keeps working after it.
    r.send_to_peer(0, &guest_frames(4200, 2, 60, 200));
}

#[test]
fn send_rarp_without_the_feature_is_refused() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    r.conn().send_raw(REQ_SEND_RARP, 1, 8, &mac_u64(GUEST_MAC));
    r.g.loopback_roundtrip(0, &guest_frames(4300, 2, 60, 200));
    r.d.wait_stderr("protocol feature RARP not acked", TIMEOUT);
}

/// Issue 11: a ring set that resumes a running guest (RX base not zero: the destination
/// of a migration, a reconnect) announces `--mac` at once, without SEND_RARP (QEMU
/// sends none once GUEST_ANNOUNCE is acked); a fresh start (base zero) does not.
#[test]
fn a_resumed_ring_announces_the_guest_at_once() {
    let test = "a_resumed_ring_announces_the_guest_at_once";
    let Some(mut r) = Rig::on_tap(test, GuestConfig::default(), "vnmrarp1") else {
        return;
    };
    let cap = r.ns().packet_socket("vnmrarp1", ETH_P_RARP, false);
    r.g.post_rx(0, 8, 2048);
    let frames = peer_frames(4400, 4, 60, 600);
    r.inject(&frames, ETH_P_TEST);
    assert_eq!(r.g.recv(0, frames.len(), TIMEOUT).len(), frames.len());
    assert!(
        cap.recv(std::time::Duration::from_millis(300)).is_none(),
        "a ring set starting from base 0 announced the guest"
    );
    r.reconnect();
    let got = cap
        .recv(TIMEOUT)
        .unwrap_or_else(|| r.d.fail("no RARP on the TAP after the rings resumed"));
    assert_eq!(&got[..6], &[0xff; 6], "a broadcast");
    assert_eq!(&got[6..12], &GUEST_MAC, "from the guest's MAC");
    assert_eq!(&got[12..14], &[0x80, 0x35], "a RARP");
    r.d.wait_stderr("announced 52:54:00", TIMEOUT);
    // The resumed rings carry traffic.
    r.send_to_peer(0, &guest_frames(4500, 2, 60, 200));
}

/// Expect the TAP's carrier (as the namespace's sysfs shows it) to be `up` `when`
/// (the reply that changes it comes after the change; a frontend going is seen a
/// while later, so this waits up to TIMEOUT).
fn expect_carrier(r: &Rig, tap: &str, up: bool, when: &str) {
    let want = if up { "1" } else { "0" };
    let path = format!("/sys/class/net/{tap}/carrier");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let got = r.ns().exec(&["cat", &path]).trim().to_string();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "carrier {got}, not {want}, {when}{}",
            r.g.log().context()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Issue 11: the source of a migration stops the device with LOG_ALL acked; the TAP's
/// carrier goes down with it, so the bridge beside it forgets the guest's MAC at once
/// and floods frames for the guest to its new port, instead of queueing them here. The
/// carrier comes back when the receive ring starts again (a migration that failed after
/// the stop) and when the frontend goes; a device stopped without logging (a guest
/// reboot) leaves it alone.
#[test]
fn a_handed_over_guest_takes_the_taps_carrier_down_until_it_resumes() {
    let test = "a_handed_over_guest_takes_the_taps_carrier_down_until_it_resumes";
    let tap = "vnmcar0";
    let Some(mut r) = Rig::on_tap(test, quiet_guest(), tap) else {
        return;
    };
    expect_carrier(&r, tap, true, "of an attached TAP");
    r.send_to_peer(0, &guest_frames(4600, 2, 60, 200));

    // Stopped without logging: the carrier stays.
    for i in 0..2 {
        r.conn().fe.get_vring_base(i).expect("GET_VRING_BASE");
    }
    expect_carrier(&r, tap, true, "after a stop without LOG_ALL");
    r.connect();
    r.send_to_peer(0, &guest_frames(4700, 2, 60, 200));

    // The handover: down at the first ring's stop, and it stays down.
    let (log, bytes) = new_log(guest_end(&r.g));
    start_logging(&mut r, &log, bytes);
    let rx_base = r.conn().fe.get_vring_base(0).expect("GET_VRING_BASE rx");
    expect_carrier(&r, tap, false, "after the handover stopped RX");
    r.conn().fe.get_vring_base(1).expect("GET_VRING_BASE tx");
    expect_carrier(&r, tap, false, "with the device stopped");
    r.d.wait_stderr("carrier down", TIMEOUT);

    // The migration failed: the source starts RX again, and the carrier is back.
    let kick = r.g.vq(0).kick.try_clone().expect("the kick eventfd");
    let c = r.conn();
    c.fe.set_vring_base(0, u16::try_from(rx_base).unwrap())
        .expect("SET_VRING_BASE rx");
    c.fe.set_vring_kick(0, &kick).expect("SET_VRING_KICK rx");
    expect_carrier(&r, tap, true, "after RX resumed on the source");

    // Down again at the next handover; a frontend that goes brings it back.
    r.conn().fe.get_vring_base(0).expect("GET_VRING_BASE rx");
    expect_carrier(&r, tap, false, "after the second handover");
    r.disconnect();
    expect_carrier(&r, tap, true, "after the frontend went");
    r.connect();
    r.send_to_peer(0, &guest_frames(4800, 2, 60, 200));
}
