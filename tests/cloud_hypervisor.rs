// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The backend driven the way cloud-hypervisor drives it (see
//! `common::cloud_hypervisor`): its negotiation, set-up order and reconnect path,
//! memory hotplug with ADD_MEM_REG, both of its socket modes, packets both ways through a
//! TAP. cloud-hypervisor itself needs KVM, which this machine cannot give its guests, so
//! its frontend sequence is replayed here through rust-vmm's `Frontend`, the code its
//! VMM uses.

mod common;

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::cloud_hypervisor::{self as ch, ChDevice};
use common::connection::Connection;
use common::daemon::Daemon;
use common::guest::{bit, Guest, GuestConfig};
use common::netns::NetNs;
use common::packet::{
    assert_bytes, guest_frames, ipv4_udp_frame, pattern, ETH_P_IP, ETH_P_TEST, GUEST_MAC,
    GUEST_MAC_STR, PEER_MAC,
};
use common::{privileged, unique, STATS_TIMEOUT, TIMEOUT};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MQ};

const TAP: &str = "vnmch0";

/// A guest of `pairs` queue pairs that acks every virtio feature cloud-hypervisor
/// offers it (not the vhost-user bits PROTOCOL_FEATURES and LOG_ALL: a guest driver
/// never acks those).
fn ch_guest(pairs: usize) -> Guest {
    let vhost_only = VhostUserVirtioFeatures::PROTOCOL_FEATURES | VhostUserVirtioFeatures::LOG_ALL;
    Guest::new(GuestConfig {
        pairs,
        features: ch::avail_features(pairs) & !vhost_only.bits(),
        ..GuestConfig::default()
    })
}

/// Receive `n` packets spread over the guest's pairs in any proportion.
fn recv_spread(g: &mut Guest, d: &Daemon, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    while got.len() < n {
        for pair in 0..g.pairs.len() {
            let more = g.recv_until(pair, n - got.len(), Duration::from_millis(20));
            got.extend(more.into_iter().map(|p| p.frame));
        }
        if Instant::now() >= deadline {
            let stats = d.stats().map(|s| s.to_string()).unwrap_or_default();
            d.fail(&format!(
                "only {} of {n} frames reached the guest; stats: {stats}",
                got.len()
            ));
        }
    }
    got
}

/// `frames` must all arrive, in any order across pairs.
fn same_frames(got: Vec<Vec<u8>>, want: &[Vec<u8>]) {
    let mut left: HashMap<Vec<u8>, usize> = HashMap::new();
    for f in want {
        *left.entry(f.clone()).or_default() += 1;
    }
    for f in got {
        match left.get_mut(&f) {
            Some(n) if *n > 0 => *n -= 1,
            _ => panic!("unexpected or duplicated frame ({} bytes)", f.len()),
        }
    }
}

#[test]
fn cloud_hypervisor_client_mode_two_pairs_over_a_tap_with_memory_hotplug() {
    let test = "cloud_hypervisor_client_mode_two_pairs_over_a_tap_with_memory_hotplug";
    if !privileged(test) {
        return;
    }
    let ns = NetNs::new();
    // vhost_mode=client (cloud-hypervisor's default): it connects to our socket.
    let mut d = Daemon::spawn(
        &["--tap", TAP, "--queues", "2", "--mac", GUEST_MAC_STR],
        Some(&ns),
    );
    let mut g = ch_guest(2);
    g.follow(&d);
    let stream = d.connect(TIMEOUT);
    let (mut conn, dev) = ch::negotiate(&g, stream);
    assert_eq!(dev.backend_queues, 4, "GET_QUEUE_NUM for 2 pairs");
    // With LOG_SHMFD (and LOG_ALL among the features) cloud-hypervisor counts the
    // backend as migratable.
    let want_protocol = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::LOG_SHMFD;
    assert_eq!(
        dev.acked_protocol, want_protocol,
        "protocol features both offer"
    );
    assert_eq!(
        dev.acked_features & bit(VIRTIO_NET_F_CTRL_VQ),
        0,
        "no CTRL_VQ: cloud-hypervisor keeps no control queue, every ring is ours"
    );
    assert_ne!(dev.acked_features & bit(VIRTIO_NET_F_MQ), 0);
    assert_ne!(
        dev.acked_features & VhostUserVirtioFeatures::LOG_ALL.bits(),
        0
    );
    assert_ne!(dev.acked_features & bit(VIRTIO_NET_F_HOST_TSO4), 0);
    ch::activate(&mut conn, &mut g, &dev);
    ns.wait_link(TAP, &mut d, TIMEOUT);
    ns.link_up(TAP);
    let cap = ns.packet_socket(TAP, ETH_P_TEST, false);
    let inj = ns.packet_socket(TAP, 0, false);

    // TX on both pairs reaches the TAP.
    let f0 = guest_frames(6000, 5, 60, 1514);
    let f1 = guest_frames(6100, 7, 60, 1514);
    g.send(0, &f0);
    g.send(1, &f1);
    g.wait_tx(0, f0.len());
    g.wait_tx(1, f1.len());
    let all: Vec<Vec<u8>> = f0.iter().chain(&f1).cloned().collect();
    let on_tap: Vec<Vec<u8>> = (0..all.len())
        .map(|i| {
            cap.recv(TIMEOUT)
                .unwrap_or_else(|| d.fail(&format!("only {i} TX frames reached the TAP")))
        })
        .collect();
    same_frames(on_tap, &all);

    // RX from the TAP, spread over both pairs by the multi-queue TAP.
    let rx = |seed: u32| -> Vec<Vec<u8>> {
        (0..16u16)
            .map(|i| {
                ipv4_udp_frame(
                    GUEST_MAC,
                    PEER_MAC,
                    2000 + 7 * i,
                    &pattern(seed + u32::from(i), 300),
                )
            })
            .collect()
    };
    // With MRG_RXBUF and GUEST_TSO the backend reads a packet only while 64 KiB of
    // buffers are posted (a 64 KiB GSO packet may come); keep well above that.
    g.post_rx(0, 64, 2048);
    g.post_rx(1, 64, 2048);
    let frames = rx(7000);
    for f in &frames {
        inj.send(f, ETH_P_IP, GUEST_MAC);
    }
    same_frames(recv_spread(&mut g, &d, frames.len()), &frames);

    // Memory hotplug: a new region by ADD_MEM_REG, then buffers only there.
    ch::hotplug(&mut conn, &mut g, 2);
    g.buf_regions = vec![2];
    let f2 = guest_frames(6200, 4, 60, 1514);
    g.send(0, &f2);
    g.wait_tx(0, f2.len());
    for (i, f) in f2.iter().enumerate() {
        let got = cap
            .recv(TIMEOUT)
            .unwrap_or_else(|| d.fail("a frame from hotplugged memory never reached the TAP"));
        assert_bytes(&got, f, &format!("frame {i} from hotplugged memory"));
    }
    g.post_rx(0, 64, 2048);
    g.post_rx(1, 64, 2048);
    let frames = rx(7100);
    for f in &frames {
        inj.send(f, ETH_P_IP, GUEST_MAC);
    }
    same_frames(recv_spread(&mut g, &d, frames.len()), &frames);

    // reset_vhost_user: every ring stops and hands back where the guest's avail side
    // stands (TX: everything consumed).
    let bases = ch::reset(&mut conn, &g);
    for pair in 0..2 {
        assert_eq!(
            bases[2 * pair + 1],
            u32::from(g.pairs[pair].tx.ring.avail_idx()),
            "GET_VRING_BASE of TX ring {pair}{}",
            d.log().context()
        );
    }
    let s = d.wait_stats("the traffic counted", STATS_TIMEOUT, |s| {
        s.total("tx_packets") == 16 && s.total("rx_packets") == 32
    });
    assert_eq!(s.total("ring_errors"), 0, "{s}");
    d.assert_running("after cloud-hypervisor's sequence");
}

/// Loop `frames` back through the backend; first post the 64 KiB of RX buffers a
/// guest with MRG_RXBUF and GUEST_TSO keeps posted (the backend gathers that much per
/// packet).
fn roundtrip(g: &mut Guest, frames: &[Vec<u8>]) {
    g.post_rx(0, 40, 2048);
    g.loopback_roundtrip(0, frames);
}

/// Accept one connection on `listener` within the deadline (the daemon connects to it).
fn accept(listener: &UnixListener, d: &mut Daemon) -> UnixStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                d.assert_running("while it should connect to cloud-hypervisor");
                if Instant::now() >= deadline {
                    d.fail("--client: the backend did not connect within 5 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// cloud-hypervisor with `vhost_mode=server` listens; the backend runs with `--client`.
fn listen(path: &str) -> UnixListener {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).expect("bind cloud-hypervisor's socket");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn client_backend(path: &str) -> Daemon {
    Daemon::spawn_raw(&[
        "--socket",
        path,
        "--client",
        "--uplink",
        "loopback",
        "--mac",
        GUEST_MAC_STR,
    ])
}

#[test]
fn cloud_hypervisor_server_mode_reconnects_to_a_restarted_backend() {
    let path = format!("{}.sock", unique("/tmp/vnmt-ch"));
    let listener = listen(&path);
    let mut d = client_backend(&path);
    let mut g = ch_guest(1);
    g.follow(&d);
    let stream = accept(&listener, &mut d);
    let (mut conn, dev): (Connection, ChDevice) = ch::negotiate(&g, stream);
    ch::activate(&mut conn, &mut g, &dev);
    roundtrip(&mut g, &guest_frames(800, 8, 60, 1514));

    // The backend dies; cloud-hypervisor sees the hang-up, unlinks and binds its socket
    // again and waits; a new backend process connects and gets the reconnect sequence,
    // rings starting at the guest's avail index.
    drop(d);
    drop(conn);
    drop(listener);
    let listener = listen(&path);
    let mut d = client_backend(&path);
    g.follow(&d);
    let stream = accept(&listener, &mut d);
    let _conn = ch::reinitialize(&mut g, stream, &dev);
    roundtrip(&mut g, &guest_frames(900, 8, 60, 1514));
    d.assert_running("after cloud-hypervisor's reconnect");
    // The RX buffers posted before the restart sit between the used index and the avail
    // index cloud-hypervisor gave as the base: the backend says so and goes on from the
    // used index, so the guest never sees a used entry it did not get.
    let log = d.stderr();
    assert!(
        log.contains("never returned by this backend"),
        "the skipped RX buffers are not reported:\n{log}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn cloud_hypervisor_client_mode_reconnects_when_the_connection_drops() {
    // vhost_mode=client: a connection that drops (not the process) is served again by
    // the same backend, which replays nothing of its own: cloud-hypervisor's reconnect
    // sequence sets everything up again.
    let mut d = Daemon::spawn(&["--uplink", "loopback", "--mac", GUEST_MAC_STR], None);
    let mut g = ch_guest(1);
    g.follow(&d);
    let (mut conn, dev) = ch::negotiate(&g, d.connect(TIMEOUT));
    ch::activate(&mut conn, &mut g, &dev);
    roundtrip(&mut g, &guest_frames(1000, 8, 60, 1514));
    drop(conn);
    std::thread::sleep(Duration::from_millis(100));
    d.assert_running("after cloud-hypervisor's connection dropped");
    let _conn = ch::reinitialize(&mut g, d.connect(TIMEOUT), &dev);
    roundtrip(&mut g, &guest_frames(1100, 8, 60, 1514));
}
