//! The daemon with its AF_XDP uplink (`--xdp`) on a veth pair inside a namespace the
//! test creates: guest frames reach the peer byte for byte, frames from the peer reach
//! guest buffers, and a TX ring that cannot drain (link down) holds packets back
//! without loss until the link comes up. Needs root.

mod common;

use common::daemon::Daemon;
use common::guest::{Guest, GuestConfig};
use common::netns::NetNs;
use common::packet::{
    assert_bytes, guest_frames, test_frame, ETH_P_TEST, GUEST_MAC, GUEST_MAC_STR, PEER_MAC,
};
use common::{privileged, STATS_TIMEOUT, TIMEOUT};

const XDP_IF: &str = "vnmxa";
const PEER_IF: &str = "vnmxb";

fn veth(ns: &NetNs) {
    ns.ip(&[
        "link", "add", XDP_IF, "type", "veth", "peer", "name", PEER_IF,
    ]);
    ns.ip(&["link", "set", XDP_IF, "up"]);
    ns.ip(&["link", "set", PEER_IF, "up"]);
}

#[test]
fn guest_traffic_crosses_the_xdp_uplink_both_ways() {
    if !privileged("guest_traffic_crosses_the_xdp_uplink_both_ways") {
        return;
    }
    let ns = NetNs::new();
    veth(&ns);
    let mut d = Daemon::spawn(&["--xdp", XDP_IF, "--mac", GUEST_MAC_STR], Some(&ns));
    let mut g = Guest::new(GuestConfig::default());
    let _c = g.attach(&mut d);
    let cap = ns.packet_socket(PEER_IF, ETH_P_TEST, false);
    let inj = ns.packet_socket(PEER_IF, 0, false);

    let frames = guest_frames(7000, 32, 60, 1514);
    g.send(0, &frames);
    g.wait_tx(0, frames.len());
    for (i, f) in frames.iter().enumerate() {
        let Some(got) = cap.recv(TIMEOUT) else {
            d.fail(&format!("frame {i} never reached the veth peer"));
        };
        assert_bytes(&got, f, &format!("frame {i} at the peer"));
    }

    g.post_rx(0, 64, 2048);
    let inbound: Vec<Vec<u8>> = (0..32u32)
        .map(|i| {
            test_frame(
                GUEST_MAC,
                PEER_MAC,
                8000 + i,
                60 + 40 * usize::try_from(i).unwrap(),
            )
        })
        .collect();
    for f in &inbound {
        inj.send(f, ETH_P_TEST, GUEST_MAC);
    }
    let got = g.recv(0, inbound.len(), TIMEOUT);
    for (i, (p, f)) in got.iter().zip(&inbound).enumerate() {
        assert_bytes(&p.frame, f, &format!("frame {i} in guest buffers"));
    }
    let s = d.wait_stats("xdp traffic counted", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 32 && s.queue(0, "rx_packets") == 32
    });
    assert_eq!(s.total("tx_drop_uplink"), 0, "{s}");
}

#[test]
fn a_tx_ring_that_cannot_drain_holds_packets_without_loss() {
    if !privileged("a_tx_ring_that_cannot_drain_holds_packets_without_loss") {
        return;
    }
    let ns = NetNs::new();
    veth(&ns);
    let mut d = Daemon::spawn(
        &[
            "--xdp",
            XDP_IF,
            "--mac",
            GUEST_MAC_STR,
            "--queue-size",
            "1024",
        ],
        Some(&ns),
    );
    let mut g = Guest::new(GuestConfig {
        queue_size: 1024,
        ..GuestConfig::default()
    });
    let _c = g.attach(&mut d);
    let cap = ns.packet_socket(PEER_IF, ETH_P_TEST, false);
    cap.set_rcvbuf(64 << 20);
    // With the link down the socket's TX ring fills up and stays full: 2000 frames are
    // accepted (the uplink's TX budget is 2048 frames), the next 400 must wait.
    ns.ip(&["link", "set", XDP_IF, "down"]);
    let frames = guest_frames(9000, 2400, 60, 200);
    for chunk in frames[..2000].chunks(200) {
        g.send(0, chunk);
        g.wait_tx(0, chunk.len());
    }
    g.send(0, &frames[2000..]);
    d.wait_stats("TX blocked on the uplink", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_eagain") > 0
    });
    ns.ip(&["link", "set", XDP_IF, "up"]);
    g.wait_tx(0, 400);
    let mut seen = 0usize;
    while seen < frames.len() {
        let Some(got) = cap.recv(TIMEOUT) else {
            d.fail(&format!(
                "only {seen} of {} frames reached the peer",
                frames.len()
            ));
        };
        if got.len() >= 14 && got[..6] == frames[seen][..6] {
            assert_bytes(&got, &frames[seen], &format!("frame {seen} at the peer"));
            seen += 1;
        }
    }
    let s = d.wait_stats("all TX counted", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 2400
    });
    assert_eq!(s.total("tx_drop_uplink"), 0, "{s}");
}
