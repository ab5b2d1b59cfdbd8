// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vhost-user protocol scenarios against the real daemon (loopback uplink): what is
//! offered, QEMU 7.2's message order, malformed messages, ring stop/restart, client mode.

mod common;

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::connection::{SetupOrder, HDR_VERSION};
use common::daemon::Daemon;
use common::guest::{bit, Guest, GuestConfig};
use common::packet::{guest_frames, GUEST_MAC, GUEST_MAC_STR};
use common::rig::Rig;
use common::{unique, STATS_TIMEOUT, TIMEOUT};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

#[test]
fn offers_the_documented_features_and_config_space() {
    let cfg = GuestConfig {
        pairs: 2,
        ..GuestConfig::default()
    };
    let mut r = Rig::loopback(cfg, &["--mtu", "9000"]);
    let c = r.conn();
    let required = [
        ("VERSION_1", VIRTIO_F_VERSION_1),
        ("MAC", VIRTIO_NET_F_MAC),
        ("MTU", VIRTIO_NET_F_MTU),
        ("STATUS", VIRTIO_NET_F_STATUS),
        ("MQ", VIRTIO_NET_F_MQ),
        ("CSUM", VIRTIO_NET_F_CSUM),
        ("GUEST_CSUM", VIRTIO_NET_F_GUEST_CSUM),
        ("HOST_TSO4", VIRTIO_NET_F_HOST_TSO4),
        ("HOST_TSO6", VIRTIO_NET_F_HOST_TSO6),
        ("GUEST_TSO4", VIRTIO_NET_F_GUEST_TSO4),
        ("GUEST_TSO6", VIRTIO_NET_F_GUEST_TSO6),
        ("HOST_ECN", VIRTIO_NET_F_HOST_ECN),
        ("GUEST_ECN", VIRTIO_NET_F_GUEST_ECN),
        ("MRG_RXBUF", VIRTIO_NET_F_MRG_RXBUF),
        ("EVENT_IDX", VIRTIO_RING_F_EVENT_IDX),
        ("RING_INDIRECT_DESC", VIRTIO_RING_F_INDIRECT_DESC),
        ("PROTOCOL_FEATURES", 30),
    ];
    let missing: Vec<&str> = required
        .iter()
        .filter(|(_, b)| c.offered & bit(*b) == 0)
        .map(|(n, _)| *n)
        .collect();
    assert!(missing.is_empty(), "features not offered: {missing:?}");
    let proto = [
        ("MQ", VhostUserProtocolFeatures::MQ),
        ("REPLY_ACK", VhostUserProtocolFeatures::REPLY_ACK),
        ("CONFIG", VhostUserProtocolFeatures::CONFIG),
        (
            "CONFIGURE_MEM_SLOTS",
            VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        ),
        ("STATUS", VhostUserProtocolFeatures::STATUS),
    ];
    let missing: Vec<&str> = proto
        .iter()
        .filter(|(_, f)| !c.protocol_offered.contains(*f))
        .map(|(n, _)| *n)
        .collect();
    assert!(
        missing.is_empty(),
        "protocol features not offered: {missing:?}"
    );
    assert!(
        c.queue_num >= 2,
        "GET_QUEUE_NUM {} for 2 pairs",
        c.queue_num
    );
    assert!(
        c.max_mem_slots >= 2,
        "GET_MAX_MEM_SLOTS {}",
        c.max_mem_slots
    );

    // virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
    let cs = c.net_config();
    assert_eq!(cs.len(), 12, "config space bytes: {cs:?}");
    assert_eq!(cs[0..6], GUEST_MAC, "config mac");
    let status = u16::from_le_bytes([cs[6], cs[7]]);
    assert_eq!(
        status & 1,
        1,
        "VIRTIO_NET_S_LINK_UP not set (status {status:#x})"
    );
    assert_eq!(u16::from_le_bytes([cs[8], cs[9]]), 2, "max_virtqueue_pairs");
    assert_eq!(u16::from_le_bytes([cs[10], cs[11]]), 9000, "mtu");

    // And the negotiated device works on both pairs. With MRG_RXBUF the daemon gathers
    // buffers for the largest packet the MTU allows (9030 bytes) before it receives.
    r.g.post_rx(0, 8, 2048);
    r.g.post_rx(1, 8, 2048);
    r.g.loopback_roundtrip(0, &guest_frames(1, 3, 60, 1514));
    r.g.loopback_roundtrip(1, &guest_frames(4, 3, 60, 1514));
}

#[test]
fn qemu72_early_vring_enable_gives_working_rings() {
    let cfg = GuestConfig {
        pairs: 2,
        order: SetupOrder::Qemu72,
        ..GuestConfig::default()
    };
    let mut r = Rig::loopback(cfg, &[]);
    // No SET_VRING_ENABLE after SET_FEATURES and no kick on RX: rings must still run.
    r.g.loopback_roundtrip(0, &guest_frames(10, 8, 60, 1514));
    r.g.loopback_roundtrip(1, &guest_frames(20, 8, 60, 1514));
    r.d.wait_stats("8 packets per pair", STATS_TIMEOUT, |s| {
        s.queue(0, "rx_packets") == 8 && s.queue(1, "rx_packets") == 8
    });
    r.d.assert_running("after QEMU 7.2's message order");
    // QEMU 7.2 reconnecting replays the same order: the early enables are per
    // connection.
    r.disconnect();
    r.connect();
    r.g.loopback_roundtrip(0, &guest_frames(25, 4, 60, 1514));
    r.g.loopback_roundtrip(1, &guest_frames(30, 4, 60, 1514));
}

#[test]
fn vring_enable_zero_pauses_a_pair_and_one_resumes_it() {
    let cfg = GuestConfig {
        pairs: 2,
        ..GuestConfig::default()
    };
    let mut r = Rig::loopback(cfg, &[]);
    r.g.loopback_roundtrip(1, &guest_frames(80, 2, 60, 200));
    // The guest goes down to one pair (ethtool -L combined 1): QEMU disables pair 1.
    for ring in [2, 3] {
        r.conn()
            .fe
            .set_vring_enable(ring, false)
            .unwrap_or_else(|e| r.d.fail(&format!("SET_VRING_ENABLE({ring}, 0): {e:?}")));
    }
    let paused = guest_frames(90, 3, 60, 1514);
    r.g.post_rx(1, 3, 2048);
    r.g.send(1, &paused);
    r.g.loopback_roundtrip(0, &guest_frames(95, 4, 60, 1514));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !r.g.pairs[1].tx.ring.has_used(&r.g.mem),
        "a disabled TX ring was processed"
    );
    // Back to two pairs: what was queued meanwhile goes through.
    for ring in [2, 3] {
        r.conn()
            .fe
            .set_vring_enable(ring, true)
            .unwrap_or_else(|e| r.d.fail(&format!("SET_VRING_ENABLE({ring}, 1): {e:?}")));
    }
    // No new kick: enabling a ring with pending chains starts it.
    let got = r.g.recv(1, 3, TIMEOUT);
    for (p, f) in got.iter().zip(&paused) {
        common::packet::assert_bytes(&p.frame, f, "frame queued while the pair was disabled");
    }
    r.g.wait_tx(1, 3);
}

#[test]
fn set_status_is_kept_and_get_status_reports_it() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    const SET_STATUS: u32 = 39;
    const GET_STATUS: u32 = 40;
    // ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, as QEMU sends when it starts.
    let c = r.conn();
    c.send_raw(SET_STATUS, HDR_VERSION, 8, &0x0fu64.to_le_bytes());
    assert_eq!(
        c.request_u64(GET_STATUS),
        0x0f,
        "GET_STATUS after SET_STATUS(0xf)"
    );
    r.g.loopback_roundtrip(0, &guest_frames(97, 4, 60, 1514));
    r.d.assert_running("after SET_STATUS");
}

fn wait_log(d: &Daemon, from: usize, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = d.stderr();
        let new = text.get(from..).unwrap_or_default().to_string();
        if new.contains(needle) {
            return new;
        }
        if Instant::now() >= deadline {
            d.fail(&format!("no {needle:?} line in the daemon's log"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn malformed_message_closes_only_that_connection() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    r.g.loopback_roundtrip(0, &guest_frames(30, 2, 60, 200));
    r.disconnect();
    // (request, size field, body): a body shorter than the request needs, and a size
    // beyond the protocol's maximum.
    let cases: [(&str, u32, u32, Vec<u8>); 3] = [
        ("SET_FEATURES with 4 bytes", 2, 4, vec![0; 4]),
        ("SET_VRING_NUM with 4 bytes", 8, 4, vec![0; 4]),
        ("GET_FEATURES claiming 1 MiB", 1, 1 << 20, vec![0; 8]),
    ];
    for (what, request, size, body) in cases {
        let mut g = Guest::new(GuestConfig::default());
        let mut c = g.attach(&mut r.d);
        let mark = r.d.stderr().len();
        c.send_raw(request, HDR_VERSION, size, &body);
        if !c.wait_closed(TIMEOUT) {
            r.d.fail(&format!("{what}: the daemon kept the connection open"));
        }
        let new = wait_log(&r.d, mark, "ERROR");
        assert!(
            new.lines().any(|l| l.contains("ERROR")),
            "{what}: no error logged: {new}"
        );
        r.d.assert_running(&format!("after {what}"));
        // The next connection is served normally.
        let mut g2 = Guest::new(GuestConfig::default());
        let _c2 = g2.attach(&mut r.d);
        g2.loopback_roundtrip(0, &guest_frames(40, 4, 60, 1514));
    }
}

#[test]
fn get_vring_base_stops_rings_and_set_vring_base_restarts_them() {
    let mut r = Rig::loopback(GuestConfig::default(), &[]);
    let frames = guest_frames(50, 5, 60, 1514);
    r.g.loopback_roundtrip(0, &frames);
    // QEMU stops the device: GET_VRING_BASE on every ring returns the next avail index.
    let c = r.conn();
    let rx_base = c.fe.get_vring_base(0).expect("GET_VRING_BASE rx");
    let tx_base = c.fe.get_vring_base(1).expect("GET_VRING_BASE tx");
    assert_eq!(
        rx_base,
        u32::from(r.g.pairs[0].rx.ring.last_used()),
        "RX ring position"
    );
    assert_eq!(tx_base, 5, "TX ring position after 5 chains");
    // A stopped ring is not processed.
    let more = guest_frames(60, 2, 60, 200);
    r.g.send(0, &more);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !r.g.pairs[0].tx.ring.has_used(&r.g.mem),
        "the daemon processed a ring after GET_VRING_BASE stopped it"
    );
    r.disconnect();
    // Restart (a new connection replays the setup from the used index): the two chains
    // posted while stopped are sent now.
    r.connect();
    r.g.post_rx(0, 2, 2048);
    let got = r.g.recv(0, 2, TIMEOUT);
    for (p, f) in got.iter().zip(&more) {
        common::packet::assert_bytes(&p.frame, f, "frame posted while stopped");
    }
    r.g.wait_tx(0, 2);
}

#[test]
fn client_mode_connects_to_a_listening_frontend() {
    let path = format!("{}.sock", unique("/tmp/vnmt-client"));
    let listener = UnixListener::bind(&path).expect("bind the frontend socket");
    listener.set_nonblocking(true).expect("nonblocking");
    let mut d = Daemon::spawn_raw(&[
        "--socket",
        &path,
        "--client",
        "--uplink",
        "loopback",
        "--mac",
        GUEST_MAC_STR,
    ]);
    let deadline = Instant::now() + TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                d.assert_running("while it should connect to the frontend");
                if Instant::now() >= deadline {
                    d.fail("--client: the daemon did not connect within 5 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    let mut g = Guest::new(GuestConfig::default());
    let _c = g.attach_stream(stream);
    g.loopback_roundtrip(0, &guest_frames(70, 6, 60, 1514));
    let _ = std::fs::remove_file(&path);
}
