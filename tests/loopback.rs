// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Data path scenarios over the loopback uplink (`--uplink loopback`: TX reflected to RX
//! on the same pair): fast, unprivileged, independent of the TAP. Every payload is checked
//! byte for byte; counters are checked in the daemon's stats file.

mod common;

use std::time::Duration;

use common::guest::{bit, GuestConfig, TxLayout, BASE_FEATURES};
use common::memory::REGIONS;
use common::packet::{guest_frames, total_len, VnetHdr};
use common::rig::Rig;
use common::ring::Buf;
use common::{STATS_TIMEOUT, TIMEOUT};
use vhost::vhost_user::VhostUserFrontend;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

#[test]
fn tx_and_rx_round_trip_byte_exact() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    let frames = guest_frames(100, 32, 14, 1514);
    r.g.loopback_roundtrip(0, &frames);
    assert!(
        r.g.pairs[0].tx.was_called(),
        "no TX call was ever signalled"
    );
    assert!(
        r.g.pairs[0].rx.was_called(),
        "no RX call was ever signalled"
    );
    let bytes = total_len(&frames);
    r.d.wait_stats("32 packets each way on pair 0", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 32 && s.queue(0, "rx_packets") == 32
    });
    let s = r.d.stats().expect("stats file");
    assert_eq!(
        s.queue(0, "tx_bytes"),
        bytes,
        "tx_bytes (virtio header excluded)"
    );
    assert_eq!(
        s.queue(0, "rx_bytes"),
        bytes,
        "rx_bytes (virtio header excluded)"
    );
    assert_eq!(s.total("tx_packets"), 32);
    assert!(
        s.queue(0, "notifications") > 0,
        "notifications counter never moved"
    );
    assert_eq!(s.drops(0).iter().map(|(_, v)| v).sum::<u64>(), 0, "{s}");
}

#[test]
fn event_idx_off_carries_traffic() {
    let cfg = GuestConfig {
        features: BASE_FEATURES & !bit(VIRTIO_RING_F_EVENT_IDX),
        ..GuestConfig::default()
    };
    let mut r = Rig::loopback(cfg, &[]);
    assert!(!r.g.has(VIRTIO_RING_F_EVENT_IDX));
    r.g.honour_avail_event = true; // kick only unless the device set NO_NOTIFY
    for round in 0..4u32 {
        let frames = guest_frames(200 + 10 * round, 8, 60, 1514);
        r.g.loopback_roundtrip(0, &frames);
    }
    assert!(r.g.pairs[0].tx.was_called() && r.g.pairs[0].rx.was_called());
    r.d.wait_stats("32 packets each way", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 32 && s.queue(0, "rx_packets") == 32
    });
}

#[test]
fn event_idx_on_suppresses_notifications_as_asked() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    assert!(r.g.has(VIRTIO_RING_F_EVENT_IDX));
    r.g.honour_avail_event = true; // kick only when avail_event asks for it
    r.g.loopback_roundtrip(0, &guest_frames(300, 4, 60, 200));

    // Idle device: it re-enabled kicks, i.e. avail_event is the next avail index.
    for vq in [&r.g.pairs[0].tx, &r.g.pairs[0].rx] {
        let want = vq.ring.avail_idx();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while vq.ring.avail_event(&r.g.mem) != want {
            if std::time::Instant::now() >= deadline {
                r.d.fail(&format!(
                    "vring {}: idle device left avail_event at {}, avail idx is {want}",
                    vq.index,
                    vq.ring.avail_event(&r.g.mem)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // used_event far ahead on both rings: traffic flows, no call may come.
    for vq in r.g.pairs[0].both() {
        vq.ring
            .set_used_event(&r.g.mem, vq.ring.last_used().wrapping_add(0x4000));
        vq.take_call();
        vq.calls = 0;
    }
    let before = r.d.stats().expect("stats file");
    let frames = guest_frames(310, 4, 60, 600);
    r.g.post_rx(0, 4, 2048);
    r.g.send(0, &frames);
    r.g.poll_tx(0, 4);
    r.g.poll_rx(0, 4);
    let got = r.g.recv(0, 4, TIMEOUT);
    for (p, f) in got.iter().zip(&frames) {
        common::packet::assert_bytes(&p.frame, f, "frame received with used_event ahead");
    }
    std::thread::sleep(Duration::from_millis(100));
    for vq in r.g.pairs[0].both() {
        if vq.was_called() {
            r.d.fail(&format!(
                "vring {}: call signalled although used_event ({:#x}) was not crossed",
                vq.index,
                vq.ring.last_used().wrapping_add(0x4000)
            ));
        }
    }
    r.d.wait_stats("notifications_suppressed moved", STATS_TIMEOUT, |s| {
        s.queue(0, "notifications_suppressed") > before.queue(0, "notifications_suppressed")
    });

    // used_event = what we consumed: the next used entry must signal.
    for vq in r.g.pairs[0].both() {
        vq.ring.set_used_event(&r.g.mem, vq.ring.last_used());
    }
    let frames = guest_frames(320, 1, 100, 100);
    r.g.post_rx(0, 1, 2048);
    r.g.send(0, &frames);
    for vq in r.g.pairs[0].both() {
        if !vq.wait_call(TIMEOUT) {
            r.d.fail(&format!(
                "vring {}: no call after crossing used_event {}",
                vq.index,
                vq.ring.last_used()
            ));
        }
    }
    let got = r.g.recv(0, 1, TIMEOUT);
    common::packet::assert_bytes(&got[0].frame, &frames[0], "frame after re-arming");
}

#[test]
fn two_queue_pairs_carry_traffic_in_both_directions() {
    let cfg = GuestConfig {
        pairs: 2,
        ..GuestConfig::default()
    };
    let mut r = Rig::loopback(cfg, &[]);
    let queue_num = r.conn().queue_num;
    assert!(queue_num >= 2, "GET_QUEUE_NUM {queue_num} < 2 pairs");
    let f0 = guest_frames(400, 5, 60, 1514);
    let f1 = guest_frames(500, 7, 60, 1514);
    // Interleave the pairs so both workers are busy at once.
    r.g.post_rx(0, f0.len(), 2048);
    r.g.post_rx(1, f1.len(), 2048);
    r.g.send(0, &f0);
    r.g.send(1, &f1);
    for (pair, frames) in [(0, &f0), (1, &f1)] {
        let got = r.g.recv(pair, frames.len(), TIMEOUT);
        for (p, f) in got.iter().zip(frames.iter()) {
            common::packet::assert_bytes(&p.frame, f, &format!("pair {pair}"));
        }
        r.g.wait_tx(pair, frames.len());
    }
    let s =
        r.d.wait_stats("per-queue packet counts", STATS_TIMEOUT, |s| {
            s.queue(0, "rx_packets") == 5 && s.queue(1, "rx_packets") == 7
        });
    assert_eq!(s.pairs(), 2);
    assert_eq!(s.queue(0, "tx_packets"), 5, "{s}");
    assert_eq!(s.queue(1, "tx_packets"), 7, "{s}");
    assert_eq!(s.queue(0, "tx_bytes"), total_len(&f0), "{s}");
    assert_eq!(s.queue(1, "tx_bytes"), total_len(&f1), "{s}");
    assert_eq!(s.total("rx_packets"), 12, "{s}");
}

#[test]
fn disconnect_and_reconnect_with_traffic_before_and_after() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    r.g.loopback_roundtrip(0, &guest_frames(600, 8, 60, 1514));
    // RX buffers posted before the disconnect and never kicked again (a guest does not
    // know its backend restarted).
    r.g.post_rx(0, 8, 2048);
    r.reconnect();
    let frames = guest_frames(610, 4, 60, 1514);
    r.g.send(0, &frames); // only the TX ring is kicked
    let got = r.g.recv(0, 4, TIMEOUT);
    for (p, f) in got.iter().zip(&frames) {
        common::packet::assert_bytes(&p.frame, f, "after reconnect, pre-posted buffers");
    }
    r.g.wait_tx(0, 4);
    r.g.loopback_roundtrip(0, &guest_frames(620, 8, 60, 1514));
    r.d.assert_running("after the second connection's traffic");
}

#[test]
fn once_exits_zero_after_the_first_disconnect() {
    let mut r = Rig::loopback(GuestConfig::default(), &["--once"]);
    let frames = guest_frames(700, 6, 60, 1514);
    r.g.loopback_roundtrip(0, &frames);
    r.disconnect();
    let Some(status) = r.d.wait_exit(TIMEOUT) else {
        r.d.fail("--once: daemon still running after the frontend disconnected");
    };
    if !status.success() {
        r.d.fail(&format!("--once: daemon exited with {status}, expected 0"));
    }
    // The stats file is written at exit with the final counters.
    let s = r.d.stats().expect("stats file written at exit");
    assert_eq!(s.queue(0, "tx_packets"), 6, "{s}");
    assert_eq!(s.queue(0, "rx_packets"), 6, "{s}");
}

#[test]
fn memory_given_with_add_mem_reg_only() {
    // QEMU with CONFIGURE_MEM_SLOTS acked sends no SET_MEM_TABLE: one ADD_MEM_REG per
    // region, here both pieces of the memfd (the second at a non-zero mmap_offset, and
    // holding the TX ring).
    let cfg = GuestConfig {
        mem_via_add_reg: true,
        ..GuestConfig::default()
    };
    let mut r = Rig::loopback(cfg, &[]);
    r.g.loopback_roundtrip(0, &guest_frames(850, 12, 60, 1514));
}

#[test]
fn mem_slots_remove_and_add_while_idle() {
    let cfg = GuestConfig {
        // Region 1 is removed below: keep every ring in region 0.
        tx_ring_region: 0,
        ..GuestConfig::default()
    };
    let mut r = Rig::loopback(cfg, &[]);
    let slots = r.conn().max_mem_slots;
    assert!(slots >= 3, "GET_MAX_MEM_SLOTS {slots} < 3");
    // Buffers in both regions of the memory table.
    r.g.loopback_roundtrip(0, &guest_frames(800, 6, 60, 1514));

    // REM_MEM_REG region 1 (the one at a non-zero mmap_offset) while idle.
    let region = r.g.mem.region_info(1);
    r.conn()
        .fe
        .remove_mem_region(&region)
        .unwrap_or_else(|e| r.d.fail(&format!("REM_MEM_REG: {e:?}")));
    r.g.buf_regions = vec![0];
    r.g.loopback_roundtrip(0, &guest_frames(810, 6, 60, 1514));

    // A TX buffer in the removed region is outside guest memory now.
    let hdr = r.g.mem.alloc(0, 12, 16);
    r.g.mem.write(hdr.0, &VnetHdr::default().to_bytes());
    let gone = REGIONS[1].gpa + 0x10_0000;
    let head = r.g.pairs[0].tx.ring.add_chain(
        &r.g.mem,
        &[
            Buf::ro(hdr, 12),
            Buf {
                addr: gone,
                len: 100,
                write: false,
            },
        ],
    );
    r.g.kick_tx(0);
    let used = r.g.wait_tx(0, 1);
    assert_eq!((used[0].id, used[0].len), (head, 0));
    r.d.wait_stats(
        "a TX buffer in the removed region counted",
        STATS_TIMEOUT,
        |s| s.queue(0, "tx_drop_bad_memory") == 1,
    );

    // ADD_MEM_REG region 2 and put every new buffer there.
    let region = r.g.mem.region_info(2);
    r.conn()
        .fe
        .add_mem_region(&region)
        .unwrap_or_else(|e| r.d.fail(&format!("ADD_MEM_REG: {e:?}")));
    r.g.buf_regions = vec![2];
    r.g.loopback_roundtrip(0, &guest_frames(820, 6, 60, 1514));

    // And region 1 back again.
    let region = r.g.mem.region_info(1);
    r.conn()
        .fe
        .add_mem_region(&region)
        .unwrap_or_else(|e| r.d.fail(&format!("ADD_MEM_REG: {e:?}")));
    r.g.buf_regions = vec![1, 2];
    r.g.loopback_roundtrip(0, &guest_frames(830, 6, 60, 1514));
    let s =
        r.d.wait_stats("24 packets looped back", STATS_TIMEOUT, |s| {
            s.queue(0, "rx_packets") == 24
        });
    assert_eq!(s.queue(0, "tx_drop_bad_memory"), 1, "{s}");
}

/// Open fds and threads of a process.
fn fds_and_threads(pid: u32) -> (usize, usize) {
    let count = |dir: String| {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .count()
    };
    (
        count(format!("/proc/{pid}/fd")),
        count(format!("/proc/{pid}/task")),
    )
}

#[test]
fn repeated_reconnects_leak_no_fds_or_threads() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    r.g.loopback_roundtrip(0, &guest_frames(1000, 4, 60, 1514));
    r.disconnect();
    std::thread::sleep(Duration::from_millis(200));
    let baseline = fds_and_threads(r.d.pid());
    for cycle in 0..15u32 {
        r.connect();
        r.g.loopback_roundtrip(0, &guest_frames(1100 + 10 * cycle, 4, 60, 1514));
        r.disconnect();
    }
    // Idle again: the same fds and threads as after the first connection.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let now = fds_and_threads(r.d.pid());
        if now == baseline {
            break;
        }
        if std::time::Instant::now() >= deadline {
            r.d.fail(&format!(
                "after 15 more connections the daemon holds (fds, threads) {now:?}, \
                 {baseline:?} after the first"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn disconnect_while_traffic_is_in_flight() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    // 60 chains kicked in two batches, RX room for all of them and the marker (64
    // buffers now, 64 after the reconnect).
    let burst = guest_frames(1200, 60, 60, 1514);
    r.g.post_rx(0, 64, 2048);
    r.g.send(0, &burst[..30]);
    r.g.send(0, &burst[30..]);
    r.disconnect(); // while the worker is busy
    r.d.assert_running("after a disconnect in the middle of traffic");
    r.connect();
    // Whatever was in flight may arrive first (each byte-exact); the marker must arrive.
    let marker = guest_frames(1500, 1, 333, 333);
    r.g.post_rx(0, 64, 2048);
    r.g.send(0, &marker);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut seen_marker = false;
    let mut received = 0;
    while !seen_marker && std::time::Instant::now() < deadline {
        for p in r.g.recv_until(0, 64, Duration::from_millis(100)) {
            received += 1;
            if p.frame == marker[0] {
                seen_marker = true;
            } else if !burst.contains(&p.frame) {
                r.d.fail(&format!(
                    "a {}-byte frame that was never sent arrived after the reconnect",
                    p.frame.len()
                ));
            }
        }
    }
    if !seen_marker {
        let tx_used = r.g.pairs[0].tx.ring.used_idx(&r.g.mem);
        let rx_used = r.g.pairs[0].rx.ring.used_idx(&r.g.mem);
        let stats = r.d.stats().map(|s| s.to_string()).unwrap_or_default();
        r.d.fail(&format!(
            "the marker frame never arrived after reconnecting in the middle of a burst: \
             {received} frames received, TX used.idx {tx_used} (avail {}), RX used.idx \
             {rx_used} (avail {}); stats {stats}",
            r.g.pairs[0].tx.ring.avail_idx(),
            r.g.pairs[0].rx.ring.avail_idx()
        ));
    }
    r.d.assert_running("after the reconnect");
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    let frames = guest_frames(1600, 5, 60, 1514);
    r.g.loopback_roundtrip(0, &frames);
    let pid = libc::pid_t::try_from(r.d.pid()).expect("pid fits pid_t");
    // SAFETY: kill(2) on the PID of our own child process, which has not been reaped
    // (Daemon reaps it only in wait_exit/drop); the result is checked.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let Some(status) = r.d.wait_exit(TIMEOUT) else {
        r.d.fail("still running 5 s after SIGTERM (with a frontend connected)");
    };
    if !status.success() {
        r.d.fail(&format!("exit status {status} after SIGTERM"));
    }
    let s = r.d.stats().expect("stats file");
    assert_eq!(s.queue(0, "rx_packets"), 5, "final stats at exit: {s}");
    assert!(
        !r.d.socket.exists(),
        "socket file left behind after SIGTERM"
    );
}

#[test]
fn set_mem_table_again_while_running() {
    // QEMU sends a whole new table on memory hotplug, with the rings running.
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    r.g.loopback_roundtrip(0, &guest_frames(1700, 4, 60, 1514));
    let regions: Vec<_> = [0, 1, 2].iter().map(|&i| r.g.mem.region_info(i)).collect();
    vhost::VhostBackend::set_mem_table(&r.conn().fe, &regions)
        .unwrap_or_else(|e| r.d.fail(&format!("second SET_MEM_TABLE: {e:?}")));
    r.g.buf_regions = vec![2, 1];
    r.g.loopback_roundtrip(0, &guest_frames(1710, 8, 60, 1514));
    r.d.assert_running("after the memory table was replaced");
}

/// `--tx-holdoff` (adaptive): after a TX batch the device leaves kicks off (avail_event
/// stays behind) and comes back to the ring by timer, so chains published without a kick
/// are still taken; while the timer's looks keep finding chains the holdoff goes on (a
/// stream needs almost no kicks); once a look finds the ring empty, kicks are asked for
/// again. The guest here sends one large packet at a time (a stream's, 1 KiB or more),
/// each as soon as the last came back.
#[test]
fn tx_holdoff_takes_chains_without_kicks_then_asks_for_kicks_again() {
    // A ceiling of 20 ms: runs start at 2.5 ms, longer than the test guest takes to
    // see a used entry (it polls every 2 ms) and publish the next chain.
    let mut r = Rig::loopback(GuestConfig::default(), &["--tx-holdoff", "20000"]);
    assert!(r.g.has(VIRTIO_RING_F_EVENT_IDX));
    r.g.honour_avail_event = true;
    const N: usize = 200;
    let frames = guest_frames(400, N, 1100, 1514);
    let mut kicks = 0;
    for (i, f) in frames.iter().enumerate() {
        let layout = if i % 2 == 0 {
            TxLayout::Single
        } else {
            TxLayout::Split
        };
        r.g.add_tx(0, VnetHdr::default(), f, layout);
        if r.g.pairs[0].tx.publish(&r.g.mem, true) {
            kicks += 1;
        } else if i == 0 {
            r.d.fail("idle device did not ask for a kick for the first chain");
        }
        // Without a kick the holdoff timer must bring the device back to the ring.
        r.g.poll_tx(0, 1);
        if i % 32 == 31 {
            // Keep the loopback's RX side drained.
            r.g.post_rx(0, 32, 2048);
            r.g.recv(0, 32, TIMEOUT);
        }
    }
    // Without the holdoff every chain would find kicks on (the device drains each one
    // and turns them on); a guest that lost the CPU for longer than a period now and
    // then may need a few.
    assert!(
        kicks < N / 4,
        "{kicks} kicks for {N} chains sent back to back under --tx-holdoff"
    );

    // Nothing more comes: a look finds the ring empty and kicks are back on.
    let vq = &r.g.pairs[0].tx;
    let want = vq.ring.avail_idx();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while vq.ring.avail_event(&r.g.mem) != want {
        if std::time::Instant::now() >= deadline {
            r.d.fail(&format!(
                "TX ring idle after the holdoff but avail_event is {}, avail idx {want}",
                vq.ring.avail_event(&r.g.mem)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kicks a guest needs to send `n` small packets one at a time, each as soon as the last
/// came back, to a daemon started with `args`.
fn kicks_for_small_packets_one_at_a_time(args: &[&str], n: usize) -> usize {
    let mut r = Rig::loopback(GuestConfig::default(), args);
    r.g.honour_avail_event = true;
    let mut kicks = 0;
    for (i, f) in guest_frames(450, n, 60, 300).iter().enumerate() {
        r.g.add_tx(0, VnetHdr::default(), f, TxLayout::Single);
        if r.g.pairs[0].tx.publish(&r.g.mem, true) {
            kicks += 1;
        }
        r.g.poll_tx(0, 1);
        if i % 32 == 31 {
            r.g.post_rx(0, 32, 2048);
            r.g.recv(0, 32, TIMEOUT);
        }
    }
    kicks
}

/// Sparse small packets (request/response traffic) are never held: under the default
/// holdoff as with none, the device turns kicks on after each one, so the next is
/// noticed at once instead of waiting for a timer.
#[test]
fn small_packets_one_at_a_time_are_not_held() {
    const N: usize = 100;
    for args in [&[][..], &["--tx-holdoff", "0"][..]] {
        let kicks = kicks_for_small_packets_one_at_a_time(args, N);
        assert!(
            kicks > N * 3 / 4,
            "{args:?}: {kicks} kicks for {N} small packets"
        );
    }
}

/// Issue 10, case 6: packets the loopback uplink still holds when a frontend goes away
/// are not delivered to the next frontend.
#[test]
fn packets_left_in_the_loopback_are_not_delivered_to_the_next_frontend() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    // TX without any RX buffer posted: the frames stay in the loopback queue.
    r.g.send(0, &guest_frames(800, 4, 60, 1514));
    r.g.wait_tx(0, 4);
    r.d.wait_stats("4 packets sent on pair 0", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 4
    });
    r.disconnect();
    std::thread::sleep(Duration::from_millis(100));
    r.d.assert_running("after the first frontend disconnected");

    // A new guest (fresh memory and rings) on the same daemon.
    let mut g2 = common::guest::Guest::new(GuestConfig::default());
    let _c2 = g2.attach(&mut r.d);
    g2.post_rx(0, 8, 2048);
    let stale = g2.recv_until(0, 1, Duration::from_millis(500));
    assert!(
        stale.is_empty(),
        "the second frontend received {} packet(s) the first one sent{}",
        stale.len(),
        r.d.log().context()
    );
    let frames = guest_frames(810, 4, 60, 1514);
    g2.send(0, &frames);
    let got = g2.recv(0, 4, TIMEOUT);
    for (p, f) in got.iter().zip(&frames) {
        common::packet::assert_bytes(&p.frame, f, "the second frontend's own frames");
    }
}
