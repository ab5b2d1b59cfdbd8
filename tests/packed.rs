// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Packed virtqueues (VIRTIO_F_RING_PACKED) through the real vhost-user socket: the
//! harness's guest with `packed: true` (`tests/common/packed_ring.rs`) on the loopback
//! uplink. Round trips byte for byte over many ring laps (so both wrap counters
//! flip), a ring size that is not a power of two, MRG_RXBUF over several buffers,
//! multi-queue, offload headers, the TX holdoff and rate limits, GET_VRING_BASE in the packed word form, a reconnect that resumes the
//! rings with buffers still posted, a killed daemon's successor that resumes from a
//! stale base, a hostile ring that breaks without harming the
//! daemon, misaligned rings refused, dpdk-testpmd's virtio_user with `packed_vq=1`,
//! and (as root, in namespaces the tests create) the TAP and the AF_XDP uplink with
//! zero-copy TX.

mod common;

use std::time::Duration;

use common::guest::{bit, GuestConfig, RxLayout, TxLayout, BASE_FEATURES, VIRTIO_F_RING_PACKED};
use common::packed_ring::PackedDesc;
use common::packet::{
    assert_bytes, guest_frames, pattern, tcp_frame, test_frame, total_len, IpVersion, VnetHdr,
    ETH_P_TEST, GUEST_MAC, PEER_MAC, TCP_ACK, TCP_CSUM_OFFSET, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
};
use common::rig::Rig;
use common::{STATS_TIMEOUT, TIMEOUT};
use vhost::VhostBackend;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MRG_RXBUF,
};

fn packed(queue_size: u16) -> GuestConfig {
    GuestConfig {
        packed: true,
        queue_size,
        ..GuestConfig::default()
    }
}

/// A loopback daemon whose largest ring is `max` (a power of two, as `--queue-size`
/// wants), and a packed guest of `cfg` connected to it.
fn loopback_at_most(max: u16, cfg: GuestConfig) -> Rig {
    let limits = GuestConfig {
        queue_size: max,
        ..cfg.clone()
    };
    let d = Rig::spawn_daemon(&limits, &["--uplink", "loopback"], &[], None);
    Rig::attach(d, cfg)
}

#[test]
fn round_trips_byte_for_byte_over_many_laps() {
    let mut r = Rig::loopback(packed(64), &[]);
    assert!(r.g.has(VIRTIO_F_RING_PACKED), "RING_PACKED acked");
    r.d.wait_stderr("features acked", TIMEOUT);
    let mut total = 0u64;
    // 12 rounds of 16 frames: TX chains take 1 or 2 descriptors, so the TX ring
    // wraps several times, and the RX ring (16 chains of 1 or 2 each round) too.
    for round in 0..12u32 {
        let frames = guest_frames(1000 + round, 16, 14, 1514);
        total += total_len(&frames);
        r.g.loopback_roundtrip(0, &frames);
    }
    assert!(r.g.pairs[0].tx.was_called() && r.g.pairs[0].rx.was_called());
    r.d.wait_stats("192 packets each way", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 192 && s.queue(0, "rx_packets") == 192
    });
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.queue(0, "tx_bytes"), total);
    assert_eq!(s.queue(0, "rx_bytes"), total);
    assert_eq!(s.queue(0, "ring_errors"), 0, "{s}");
    assert_eq!(s.drops(0).iter().map(|(_, v)| v).sum::<u64>(), 0, "{s}");
}

#[test]
fn a_ring_size_that_is_not_a_power_of_two() {
    let mut r = loopback_at_most(128, packed(100));
    for round in 0..6u32 {
        r.g.loopback_roundtrip(0, &guest_frames(1100 + round, 30, 60, 1514));
    }
    r.d.wait_stats("180 packets each way", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 180 && s.queue(0, "rx_packets") == 180
    });
}

#[test]
fn mrg_rxbuf_spreads_frames_over_several_buffers() {
    let mut r = Rig::loopback(packed(128), &[]);
    assert!(r.g.has(VIRTIO_NET_F_MRG_RXBUF));
    // 512-byte buffers: a 1514-byte frame needs four.
    r.g.post_rx(0, 64, 512);
    let frames = guest_frames(1200, 8, 1200, 1514);
    r.g.send(0, &frames);
    let got = r.g.recv(0, frames.len(), TIMEOUT);
    for (p, f) in got.iter().zip(&frames) {
        assert_bytes(&p.frame, f, "merged frame");
        p.assert_merged();
        assert!(
            p.buffers >= 3,
            "{} buffers for {} bytes",
            p.buffers,
            f.len()
        );
    }
    r.g.wait_tx(0, frames.len());
}

#[test]
fn without_mrg_rxbuf_one_chain_per_frame() {
    let cfg = GuestConfig {
        features: BASE_FEATURES & !bit(VIRTIO_NET_F_MRG_RXBUF),
        ..packed(64)
    };
    let mut r = Rig::loopback(cfg, &[]);
    r.g.loopback_roundtrip(0, &guest_frames(1300, 20, 60, 1514));
}

#[test]
fn multi_queue_pairs_each_carry_their_own_traffic() {
    let cfg = GuestConfig {
        pairs: 2,
        ..packed(64)
    };
    let mut r = Rig::loopback(cfg, &[]);
    for pair in 0..2 {
        let seed = 1400 + u32::try_from(pair).expect("fits");
        r.g.loopback_roundtrip(pair, &guest_frames(seed, 24, 60, 1514));
    }
    r.d.wait_stats("24 packets each way on each pair", STATS_TIMEOUT, |s| {
        (0..2).all(|p| s.queue(p, "tx_packets") == 24 && s.queue(p, "rx_packets") == 24)
    });
}

#[test]
fn get_vring_base_answers_the_packed_word_form_and_stops_the_ring() {
    let mut r = Rig::loopback(packed(64), &[]);
    // 40 frames: the TX ring (64 descriptors, 1 or 2 a chain) has wrapped.
    r.g.loopback_roundtrip(0, &guest_frames(1500, 40, 60, 1514));
    let tx = r.g.pairs[0].tx.packed.as_ref().expect("packed");
    let want_tx = u32::from(tx.next_avail().word()) | u32::from(tx.next_used().word()) << 16;
    let rx = r.g.pairs[0].rx.packed.as_ref().expect("packed");
    let want_rx = u32::from(rx.next_used().word()) | u32::from(rx.next_used().word()) << 16;
    let c = r.conn();
    let tx_base = c.fe.get_vring_base(1).expect("GET_VRING_BASE tx");
    let rx_base = c.fe.get_vring_base(0).expect("GET_VRING_BASE rx");
    assert_eq!(
        tx_base, want_tx,
        "TX: avail and used, wrap counters in bits 15 and 31"
    );
    assert_eq!(
        rx_base, want_rx,
        "RX: nothing in flight, used where avail is"
    );
    assert!(
        tx_base & 0x8000_8000 != 0x8000_8000 || tx_base & 0x7fff != 0,
        "TX ring never moved"
    );
    // A stopped ring is not processed.
    let more = guest_frames(1510, 3, 60, 200);
    r.g.send(0, &more);
    std::thread::sleep(Duration::from_millis(200));
    let tx = r.g.pairs[0].tx.packed.as_ref().expect("packed");
    assert!(
        !tx.has_used(&r.g.mem),
        "the daemon processed a ring after GET_VRING_BASE stopped it"
    );
    // A new connection replays the setup from the driver's positions: the three
    // chains posted while stopped go now.
    r.connect();
    r.g.post_rx(0, 3, 2048);
    let got = r.g.recv(0, 3, TIMEOUT);
    for (p, f) in got.iter().zip(&more) {
        assert_bytes(&p.frame, f, "frame posted while stopped");
    }
    r.g.wait_tx(0, 3);
}

#[test]
fn a_reconnect_resumes_packed_rings_with_buffers_still_posted() {
    let mut r = Rig::loopback(packed(64), &[]);
    r.g.loopback_roundtrip(0, &guest_frames(1600, 40, 60, 1514));
    // RX buffers posted before the disconnect and never kicked again.
    r.g.post_rx(0, 8, 2048);
    r.reconnect();
    let frames = guest_frames(1610, 8, 60, 1514);
    r.g.send(0, &frames);
    let got = r.g.recv(0, 8, TIMEOUT);
    for (p, f) in got.iter().zip(&frames) {
        assert_bytes(&p.frame, f, "after reconnect, pre-posted buffers");
    }
    r.g.wait_tx(0, 8);
    for round in 0..4u32 {
        r.g.loopback_roundtrip(0, &guest_frames(1620 + round, 20, 60, 1514));
    }
    r.d.assert_running("after the second connection's traffic");
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.queue(0, "ring_errors"), 0, "{s}");
}

/// Send `frames` on pair 0 as chains of one slot each (as a Linux guest with
/// RING_INDIRECT_DESC makes them) after posting as many one-slot RX buffers.
fn one_slot_chains(r: &mut Rig, frames: &[Vec<u8>]) {
    for _ in frames {
        r.g.add_rx(0, 2048, RxLayout::Single);
    }
    r.g.kick_rx(0);
    for f in frames {
        r.g.add_tx(0, VnetHdr::default(), f, TxLayout::Single);
    }
    r.g.kick_tx(0);
}

/// `rounds` rounds of 20 frames looped back in one-slot chains (seeds from `seed`),
/// each received byte for byte and its TX chains returned.
fn one_slot_round_trips(r: &mut Rig, seed: u32, rounds: u32, what: &str) {
    for round in 0..rounds {
        let frames = guest_frames(seed + round, 20, 60, 1514);
        one_slot_chains(r, &frames);
        let got = r.g.recv(0, frames.len(), TIMEOUT);
        for (p, f) in got.iter().zip(&frames) {
            assert_bytes(&p.frame, f, what);
        }
        r.g.wait_tx(0, frames.len());
    }
}

#[test]
fn a_killed_daemons_successor_resumes_packed_rings_from_a_stale_base() {
    let cfg = packed(64);
    let mut r = Rig::loopback(cfg.clone(), &[]);
    one_slot_round_trips(&mut r, 1700, 5, "before the kill");
    // RX buffers posted that the daemon has not filled when it is killed.
    for _ in 0..8 {
        r.g.add_rx(0, 2048, RxLayout::Single);
    }
    r.g.kick_rx(0);
    // The successor (the old daemon is killed when it is replaced), given the base of
    // the first start, 100 chains behind both rings, as QEMU gives it when the old
    // backend never answered GET_VRING_BASE.
    r.disconnect();
    r.d = Rig::spawn_daemon(&cfg, &["--uplink", "loopback"], &[], None);
    r.g.vring_base_override = Some(0x8000_8000);
    r.connect();
    let frames = guest_frames(1710, 8, 60, 1514);
    for f in &frames {
        r.g.add_tx(0, VnetHdr::default(), f, TxLayout::Single);
    }
    r.g.kick_tx(0);
    let got = r.g.recv(0, 8, TIMEOUT);
    for (p, f) in got.iter().zip(&frames) {
        assert_bytes(&p.frame, f, "after the restart, buffers posted before it");
    }
    r.g.wait_tx(0, 8);
    one_slot_round_trips(&mut r, 1720, 4, "after the restart");
    let log = r.d.stderr();
    assert!(
        log.matches("resuming at").count() == 2,
        "both rings resumed from their flags: {log}"
    );
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.queue(0, "ring_errors"), 0, "{s}");
}

#[test]
fn a_hostile_packed_ring_is_broken_and_the_daemon_carries_on() {
    let mut r = loopback_at_most(64, packed(8));
    r.g.loopback_roundtrip(0, &guest_frames(1700, 4, 60, 1514));
    // A TX descriptor whose buffer id is beyond the ring, then a kick.
    let b = r.g.mem.alloc(0, 64, 64);
    let d = PackedDesc {
        addr: b.0,
        len: 64,
        id: 300,
        flags: 0,
    };
    let tx = r.g.pairs[0].tx.packed.as_mut().expect("packed");
    tx.add_raw(&r.g.mem, &[d], true);
    r.g.pairs[0].tx.kick.write(1).expect("kick");
    r.d.wait_stats("the TX ring counted broken", STATS_TIMEOUT, |s| {
        s.queue(0, "ring_errors") == 1
    });
    // Kicked again and again: nothing more is counted, the daemon stays and its
    // worker does not spin.
    let before = r.d.cpu_ticks();
    for _ in 0..20 {
        r.g.pairs[0].tx.kick.write(1).expect("kick");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let used = r.d.cpu_ticks() - before;
    assert!(
        used * 4 < hz,
        "daemon used {used} of {hz} ticks in a second over a broken ring: spinning?\n{}",
        r.d.stderr()
    );
    r.d.assert_running("after a hostile packed ring");
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.queue(0, "ring_errors"), 1, "{s}");
    // A fresh connection with fresh rings works.
    r.disconnect();
    let mut g = common::guest::Guest::new(packed(8));
    let _c = g.attach(&mut r.d);
    g.loopback_roundtrip(0, &guest_frames(1710, 4, 60, 1514));
}

#[test]
fn offload_headers_cross_the_packed_rings_unchanged() {
    // The loopback uplink hands the guest's TX header back on RX: a TSO packet and a
    // checksum-offload one arrive whole, with the header the guest sent.
    let features = BASE_FEATURES
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4);
    let cfg = GuestConfig {
        features,
        ..packed(256)
    };
    let mut r = Rig::loopback(cfg, &[]);
    let ip = IpVersion::V4;
    let tso = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: ip.tcp_hdr_len(),
        gso_size: 1448,
        csum_start: ip.l4_offset(),
        csum_offset: TCP_CSUM_OFFSET,
        num_buffers: 0,
    };
    let big = tcp_frame(ip, PEER_MAC, GUEST_MAC, 7, TCP_ACK, &pattern(1800, 20_000));
    let csum = VnetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        gso_size: 0,
        hdr_len: 0,
        ..tso
    };
    let small = tcp_frame(ip, PEER_MAC, GUEST_MAC, 9, TCP_ACK, &pattern(1801, 900));
    // With GUEST_TSO4 the device gathers a 64 KiB frame's worth of buffers before it
    // reads a packet: enough for that after the first packet took its share.
    r.g.post_rx(0, 80, 2048);
    r.g.add_tx(0, tso, &big, TxLayout::Indirect);
    r.g.add_tx(0, csum, &small, TxLayout::Split);
    r.g.kick_tx(0);
    let got = r.g.recv(0, 2, TIMEOUT);
    assert_bytes(&got[0].frame, &big, "TSO frame");
    assert_eq!(got[0].hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(got[0].hdr.gso_size, 1448);
    assert_eq!(got[0].hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert!(got[0].buffers >= 10, "{} buffers for 20 KB", got[0].buffers);
    assert_bytes(&got[1].frame, &small, "checksum-offload frame");
    assert_eq!(got[1].hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert_eq!(
        (got[1].hdr.csum_start, got[1].hdr.csum_offset),
        (ip.l4_offset(), TCP_CSUM_OFFSET)
    );
    r.g.wait_tx(0, 2);
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.drops(0).iter().map(|(_, v)| v).sum::<u64>(), 0, "{s}");
}

/// dpdk-testpmd (net_virtio_user with `packed_vq=1`), killed by PID when dropped.
struct Testpmd {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Testpmd {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop it as Ctrl-C does (it prints its totals) and wait, bounded.
    fn stop(&mut self) -> String {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory preconditions; `pid` is our own child, not
            // reaped yet (so the PID cannot have been reused).
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return self.output();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether dpdk-testpmd can run here; skips (or fails with VNM_REQUIRE_PRIVILEGED=1)
/// saying why when it cannot.
fn testpmd_available(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    let found = std::process::Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if found {
        return true;
    }
    let reason = format!("{test}: dpdk-testpmd not found (apt-get install dpdk)");
    if std::env::var_os("VNM_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{reason} (VNM_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("SKIPPED {reason}");
    false
}

#[test]
fn dpdk_virtio_user_with_packed_vq_forwards_through_the_daemon() {
    let test = "dpdk_virtio_user_with_packed_vq_forwards_through_the_daemon";
    if !testpmd_available(test) {
        return;
    }
    let mut d = common::daemon::Daemon::spawn(
        &[
            "--uplink",
            "loopback",
            "--mac",
            common::packet::GUEST_MAC_STR,
        ],
        None,
    );
    d.wait_socket_file(TIMEOUT);
    let socket = d.socket_path().display().to_string();
    let log = std::path::PathBuf::from(format!("{}.testpmd.log", common::unique("/tmp/vnmt")));
    let out = std::fs::File::create(&log).expect("testpmd log file");
    let err = out.try_clone().expect("testpmd log file");
    // io forwarding in a loop, started with a burst: every packet testpmd receives
    // from the loopback uplink it transmits again.
    let child = std::process::Command::new("dpdk-testpmd")
        .args([
            "--lcores=0@0,1@0",
            &format!("--file-prefix={}", common::unique("vnmt-pmd")),
            // Anonymous memory shared through memfds: no huge pages needed, so the
            // test runs on a machine whose nr_hugepages is 0.
            "--no-huge",
            "--single-file-segments",
            "-m",
            "256",
            "--no-pci",
            &format!(
                "--vdev=net_virtio_user0,path={socket},queues=1,queue_size=256,mac={},packed_vq=1",
                common::packet::GUEST_MAC_STR
            ),
            "--",
            "--nb-cores=1",
            "--total-num-mbufs=16384",
            "--stats-period=1",
            "--forward-mode=io",
            "--port-topology=loop",
            "--tx-first",
            "--burst=32",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start dpdk-testpmd");
    let mut pmd = Testpmd { child, log };
    let acked = d.wait_stderr("features acked: 0x", Duration::from_secs(30));
    let hex = acked
        .rsplit("features acked: 0x")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("");
    let features = u64::from_str_radix(hex, 16)
        .unwrap_or_else(|_| panic!("features in {acked:?}\n{}", pmd.output()));
    assert!(
        features & bit(VIRTIO_F_RING_PACKED) != 0,
        "virtio_user did not ack RING_PACKED: {features:#x}\n{}",
        pmd.output()
    );
    d.wait_stats("100000 packets each way", Duration::from_secs(30), |s| {
        s.queue(0, "tx_packets") >= 100_000 && s.queue(0, "rx_packets") >= 100_000
    });
    let totals = pmd.stop();
    assert!(
        totals.contains("Accumulated forward statistics"),
        "testpmd did not stop cleanly:\n{totals}"
    );
    let s = d.stats().expect("stats file");
    assert_eq!(s.queue(0, "ring_errors"), 0, "{s}");
    assert_eq!(s.drops(0).iter().map(|(_, v)| v).sum::<u64>(), 0, "{s}");
    d.assert_running("after testpmd left");
}

#[test]
fn a_misaligned_packed_ring_is_refused_and_the_daemon_carries_on() {
    let mut r = Rig::loopback(packed(64), &[]);
    r.g.loopback_roundtrip(0, &guest_frames(1800, 4, 60, 1514));
    // A descriptor ring off its 16-byte alignment is refused with the message (an
    // invalid message ends the connection).
    let good = r.g.pairs[0].tx.config_data(&r.g.mem);
    let mut cfg = good;
    cfg.desc_table_addr += 8;
    assert!(
        r.conn().fe.set_vring_addr(1, &cfg).is_err(),
        "misaligned ring accepted"
    );
    r.d.assert_running("after a misaligned descriptor ring");
    r.connect();
    // A driver event structure 2 bytes off its 4-byte alignment (what a split avail
    // ring may be) passes the message check; the packed ring refuses it at start.
    let mut cfg = good;
    cfg.avail_ring_addr += 2;
    r.conn().fe.set_vring_addr(1, &cfg).expect("SET_VRING_ADDR");
    let log = r.d.wait_stderr("not 4-byte aligned", TIMEOUT);
    assert!(log.contains("TX ring unusable"), "{log}");
    r.d.assert_running("after a misaligned packed ring");
    // The guest sets the ring up again properly: traffic resumes.
    r.connect();
    r.g.loopback_roundtrip(0, &guest_frames(1810, 4, 60, 1514));
}

/// Frames from the peer towards the guest: `n` of growing length.
fn peer_to_guest(seed: u32, n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = 60 + 40 * usize::try_from(i).expect("fits");
            test_frame(GUEST_MAC, PEER_MAC, seed + i, len)
        })
        .collect()
}

/// Inject `frames` at the peer and expect them in the guest's buffers, byte for byte.
fn expect_in_guest(r: &mut Rig, frames: &[Vec<u8>]) {
    r.g.post_rx(0, frames.len() + 8, 2048);
    r.inject(frames, ETH_P_TEST);
    let got = r.g.recv(0, frames.len(), TIMEOUT);
    for (i, (p, f)) in got.iter().zip(frames).enumerate() {
        assert_bytes(&p.frame, f, &format!("frame {i} in packed guest buffers"));
    }
}

#[test]
fn a_tap_uplink_carries_packed_rings_both_ways() {
    let test = "a_tap_uplink_carries_packed_rings_both_ways";
    let Some(mut r) = Rig::on_tap(test, packed(256), "vnmpt0") else {
        return;
    };
    r.send_to_peer(0, &guest_frames(1900, 32, 60, 1514));
    expect_in_guest(&mut r, &peer_to_guest(1950, 32));
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.queue(0, "ring_errors"), 0, "{s}");
}

#[test]
fn the_af_xdp_uplink_carries_packed_rings_both_ways() {
    let test = "the_af_xdp_uplink_carries_packed_rings_both_ways";
    let Some(mut r) = Rig::on_veth(test, packed(256), ("vnmpa", "vnmpb"), None, &[]) else {
        return;
    };
    r.send_to_peer(0, &guest_frames(2000, 32, 60, 1514));
    expect_in_guest(&mut r, &peer_to_guest(2100, 32));
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.queue(0, "ring_errors"), 0, "{s}");
}

#[test]
fn zero_copy_tx_returns_packed_chains_when_their_packets_complete() {
    let test = "zero_copy_tx_returns_packed_chains_when_their_packets_complete";
    // Zero-copy TX holds chains in flight until their packets complete; they go back
    // to the packed ring in completion order. (Two interface queues: the guest's
    // memory is registered on the second, as in tests/xdp_daemon.rs.)
    let Some(mut r) = Rig::on_veth(
        test,
        packed(256),
        ("vnmpc", "vnmpd"),
        Some(2),
        &["--xdp-zerocopy-tx"],
    ) else {
        return;
    };
    for round in 0..4u32 {
        r.send_to_peer(0, &guest_frames(2200 + round, 32, 60, 1514));
    }
    let s = r.d.wait_stats("zero-copy TX counted", STATS_TIMEOUT, |s| {
        s.group_counter(Some(0), "xdp", "tx_zc_completed") > 0 && s.queue(0, "tx_packets") == 128
    });
    assert_eq!(s.queue(0, "ring_errors"), 0, "{s}");
    assert_eq!(s.total("tx_drop_uplink"), 0, "{s}");
}

#[test]
fn the_tx_holdoff_and_rate_limits_pace_packed_rings() {
    // 5 packets per 100 ms each way, the first 5 at once: 20 frames take at least
    // 300 ms.
    let mut r = Rig::loopback(
        packed(64),
        &[
            "--tx-holdoff",
            "200",
            "--tx-rate-limit",
            "ops=5/100",
            "--rx-rate-limit",
            "ops=5/100",
        ],
    );
    let frames = guest_frames(2300, 20, 60, 1514);
    let start = std::time::Instant::now();
    r.g.loopback_roundtrip(0, &frames);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(150),
        "20 frames at 100/s took {took:?}"
    );
    let s =
        r.d.wait_stats("both directions throttled", STATS_TIMEOUT, |s| {
            s.queue(0, "tx_throttled") > 0 && s.queue(0, "rx_throttled") > 0
        });
    assert_eq!(s.queue(0, "tx_packets"), 20, "{s}");
    assert_eq!(s.queue(0, "rx_packets"), 20, "{s}");
    assert_eq!(s.drops(0).iter().map(|(_, v)| v).sum::<u64>(), 0, "{s}");
}
