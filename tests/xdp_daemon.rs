// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The daemon with its AF_XDP uplink (`--xdp`) on a veth pair inside a namespace the
//! test creates: guest frames reach the peer byte for byte, frames from the peer reach
//! guest buffers, and a TX ring that cannot drain (link down) holds packets back
//! without loss until the link comes up. Needs root.

mod common;

use common::connection::wanted_protocol;
use common::guest::GuestConfig;
use common::packet::{assert_bytes, guest_frames, test_frame, ETH_P_TEST, GUEST_MAC, PEER_MAC};
use common::rig::Rig;
use common::{STATS_TIMEOUT, TIMEOUT};
use vhost::vhost_user::VhostUserProtocolFeatures;

const XDP_IF: &str = "vnmxa";
const PEER_IF: &str = "vnmxb";
/// vhost-user SEND_RARP.
const REQ_SEND_RARP: u32 = 19;
/// The RARP ethertype.
const ETH_P_RARP: u16 = 0x8035;

/// A daemon on [`XDP_IF`] of a fresh veth pair and a guest of `cfg` connected to it;
/// `None` when not root.
fn xdp_rig(test: &str, cfg: GuestConfig) -> Option<Rig> {
    Rig::on_veth(test, cfg, (XDP_IF, PEER_IF), None, &[])
}

#[test]
fn guest_traffic_crosses_the_xdp_uplink_both_ways() {
    let Some(mut r) = xdp_rig(
        "guest_traffic_crosses_the_xdp_uplink_both_ways",
        GuestConfig::default(),
    ) else {
        return;
    };
    let frames = guest_frames(7000, 32, 60, 1514);
    r.send_to_peer(0, &frames);

    r.g.post_rx(0, 64, 2048);
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
    r.inject(&inbound, ETH_P_TEST);
    let got = r.g.recv(0, inbound.len(), TIMEOUT);
    for (i, (p, f)) in got.iter().zip(&inbound).enumerate() {
        assert_bytes(&p.frame, f, &format!("frame {i} in guest buffers"));
    }
    let s = r.d.wait_stats("xdp traffic counted", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 32 && s.queue(0, "rx_packets") == 32
    });
    assert_eq!(s.total("tx_drop_uplink"), 0, "{s}");
}

#[test]
fn a_tx_ring_that_cannot_drain_holds_packets_without_loss() {
    let cfg = GuestConfig {
        queue_size: 1024,
        ..GuestConfig::default()
    };
    let Some(mut r) = xdp_rig(
        "a_tx_ring_that_cannot_drain_holds_packets_without_loss",
        cfg,
    ) else {
        return;
    };
    r.peer().cap.set_rcvbuf(64 << 20);
    // With the link down the socket's TX ring fills up and stays full: 2000 frames are
    // accepted (the uplink's TX budget is 2048 frames), the next 400 must wait.
    r.ns().ip(&["link", "set", XDP_IF, "down"]);
    let frames = guest_frames(9000, 2400, 60, 200);
    for chunk in frames[..2000].chunks(200) {
        r.g.send(0, chunk);
        r.g.wait_tx(0, chunk.len());
    }
    r.g.send(0, &frames[2000..]);
    r.d.wait_stats("TX blocked on the uplink", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_eagain") > 0
    });
    r.ns().ip(&["link", "set", XDP_IF, "up"]);
    r.g.wait_tx(0, 400);
    let mut seen = 0usize;
    while seen < frames.len() {
        let Some(got) = r.peer().cap.recv(TIMEOUT) else {
            r.d.fail(&format!(
                "only {seen} of {} frames reached the peer",
                frames.len()
            ));
        };
        if got.len() >= 14 && got[..6] == frames[seen][..6] {
            assert_bytes(&got, &frames[seen], &format!("frame {seen} at the peer"));
            seen += 1;
        }
    }
    let s = r.d.wait_stats("all TX counted", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 2400
    });
    assert_eq!(s.total("tx_drop_uplink"), 0, "{s}");
}

/// The paths of an AF_XDP daemon the seccomp filters must allow beyond the loop, run
/// with the default `--seccomp kill`: zero-copy TX (the worker maps guest memory again
/// and registers it as a UMEM on a third socket) and SEND_RARP (the control thread's
/// AF_PACKET socket on the interface).
#[test]
fn zero_copy_tx_and_send_rarp_run_under_the_default_seccomp_filter() {
    let test = "zero_copy_tx_and_send_rarp_run_under_the_default_seccomp_filter";
    let cfg = GuestConfig {
        protocol: wanted_protocol() | VhostUserProtocolFeatures::RARP,
        ..GuestConfig::default()
    };
    let Some(mut r) = Rig::on_veth(
        test,
        cfg,
        (XDP_IF, PEER_IF),
        Some(2),
        &["--xdp-zerocopy-tx"],
    ) else {
        return;
    };
    r.send_to_peer(0, &guest_frames(7100, 16, 60, 1514));
    r.d.wait_stats("zero-copy TX counted", STATS_TIMEOUT, |s| {
        s.group_counter(Some(0), "xdp", "tx_zc_completed") > 0
    });
    let cap = r.ns().packet_socket(PEER_IF, ETH_P_RARP, false);
    let mut mac = [0u8; 8];
    mac[..6].copy_from_slice(&GUEST_MAC);
    r.conn().send_raw(REQ_SEND_RARP, 1, 8, &mac);
    if cap.recv(TIMEOUT).is_none() {
        r.d.fail("no RARP frame at the peer after SEND_RARP");
    }
    r.send_to_peer(0, &guest_frames(7200, 4, 60, 200));
    r.d.assert_running("after zero-copy TX and SEND_RARP");
}
