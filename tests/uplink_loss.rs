// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A TAP deleted under a running backend (`ip link del`): the worker must notice, say
//! so once, stop polling it (no spinning core), return and count guest TX, and carry
//! traffic again once a TAP of the same name exists; an interface of that name that is
//! not a TAP is reported clearly. Needs root; without it the test says why it skips.

mod common;

use std::time::Duration;

use common::guest::GuestConfig;
use common::packet::{assert_bytes, guest_frames, test_frame, ETH_P_TEST, GUEST_MAC, PEER_MAC};
use common::rig::Rig;
use common::{STATS_TIMEOUT, TIMEOUT};

const TAP: &str = "vnmgone0";

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn a_deleted_tap_is_noticed_not_polled_and_reopened_when_it_comes_back() {
    let test = "a_deleted_tap_is_noticed_not_polled_and_reopened_when_it_comes_back";
    let Some(mut r) = Rig::on_tap(test, GuestConfig::default(), TAP) else {
        return;
    };
    // Traffic flows, and RX is armed (buffers posted), so the TAP's fd is polled.
    r.send_to_peer(0, &guest_frames(100, 4, 60, 1514));
    r.g.post_rx(0, 32, 2048);
    r.d.wait_stats("4 TX packets", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 4
    });

    r.ns().ip(&["link", "del", TAP]);
    r.d.wait_stats("the lost uplink counted", STATS_TIMEOUT, |s| {
        s.queue(0, "uplink_lost") == 1
    });
    // Not polled any more: a detached tun fd reports EPOLLERR for ever, which spun a
    // worker at 60-100 % of a core before. Allow a quarter of one over a second.
    let before = r.d.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let used = r.d.cpu_ticks() - before;
    assert!(
        used * 4 < hz,
        "daemon used {used} of {hz} ticks in a second with its TAP gone: spinning?\n{}",
        r.d.stderr()
    );
    // Guest TX is returned and counted while the TAP is gone.
    let lost = guest_frames(200, 8, 60, 600);
    r.g.send(0, &lost);
    r.g.wait_tx(0, lost.len());
    let s = r.d.wait_stats("TX dropped while down", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_drop_uplink_down") == 8
    });
    assert_eq!(s.queue(0, "tx_packets"), 4, "{s}");
    assert_eq!(s.queue(0, "tx_drop_uplink"), 0, "{s}");
    r.d.assert_running("with its TAP gone");
    let log = r.d.stderr();
    assert_eq!(count(&log, "is gone"), 1, "the loss is logged once:\n{log}");

    // Something that is not a TAP takes the name: the backend says it cannot reopen,
    // once, and keeps waiting.
    r.ns().ip(&[
        "link",
        "add",
        TAP,
        "type",
        "veth",
        "peer",
        "name",
        "vnmgonepeer",
    ]);
    r.d.wait_stderr("cannot reopen the uplink", STATS_TIMEOUT);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        count(&r.d.stderr(), "cannot reopen the uplink"),
        1,
        "the same reopen error is logged once:\n{}",
        r.d.stderr()
    );
    r.ns().ip(&["link", "del", TAP]);

    // The TAP comes back under its name: reopened, traffic both ways again.
    r.ns().ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    r.ns().link_up(TAP);
    r.d.wait_stats("the uplink reopened", STATS_TIMEOUT, |s| {
        s.queue(0, "uplink_reopened") == 1
    });
    let cap = r.ns().packet_socket(TAP, ETH_P_TEST, false);
    let again = guest_frames(300, 4, 60, 1514);
    r.g.send(0, &again);
    r.g.wait_tx(0, again.len());
    for (i, f) in again.iter().enumerate() {
        let got = cap.recv(TIMEOUT).unwrap_or_else(|| {
            r.d.fail(&format!("frame {i} never reached the reopened TAP"))
        });
        assert_bytes(&got, f, &format!("frame {i} after the TAP came back"));
    }
    let inj = r.ns().packet_socket(TAP, 0, false);
    let inbound: Vec<Vec<u8>> = (0..4)
        .map(|i| test_frame(GUEST_MAC, PEER_MAC, 400 + i, 100 + 300 * i as usize))
        .collect();
    for f in &inbound {
        inj.send(f, ETH_P_TEST, GUEST_MAC);
    }
    let got = r.g.recv(0, inbound.len(), TIMEOUT);
    for (i, (p, f)) in got.iter().zip(&inbound).enumerate() {
        assert_bytes(
            &p.frame,
            f,
            &format!("frame {i} into the guest after the TAP came back"),
        );
    }
    let s = r.d.wait_stats("8 TX and 4 RX packets", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 8 && s.queue(0, "rx_packets") == 4
    });
    assert_eq!(s.queue(0, "uplink_lost"), 1, "{s}");
}
