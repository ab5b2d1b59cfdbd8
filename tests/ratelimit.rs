// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Rate limits through the real daemon: a TAP in a fresh namespace, the limits from the
//! command line. Every packet arrives (a throttled direction leaves packets waiting,
//! it drops none), the throttle counters move, and the transfer takes at least the
//! time the limit implies (a lower bound only: a busy machine only makes it slower).
//! A stop while throttled stops at once (loopback, unprivileged).

mod common;

use std::time::{Duration, Instant};

use common::guest::GuestConfig;
use common::packet::{guest_frames, peer_frames, total_len, ETH_P_TEST};
use common::rig::Rig;
use common::stats::Stats;
use common::{STATS_TIMEOUT, TIMEOUT};
use vhost::VhostBackend;

/// The TAP's name inside each test's own namespace.
const TAP: &str = "vnmrl0";

/// Frames per test: their chains fit a 256-entry ring (the guest's TX layouts and RX
/// buffers take up to two descriptors each).
const N: usize = 160;

/// Bucket settings of every test: SIZE tokens per 100 ms (SIZE * 10 per second).
const REFILL_MS: u64 = 100;

/// Seconds `tokens` beyond a full bucket of `size` take at `size` per [`REFILL_MS`].
fn least_time(tokens: u64, size: u64) -> Duration {
    let beyond = tokens.saturating_sub(size);
    Duration::from_micros(beyond * REFILL_MS * 1000 / size)
}

/// The counters once `what` moved `n` packets; no drops anywhere.
fn settled(r: &mut Rig, what: &str, n: usize) -> Stats {
    let n = u64::try_from(n).unwrap();
    let s = r.d.wait_stats(&format!("{n} {what}"), STATS_TIMEOUT, |s| {
        s.queue(0, what) == n
    });
    assert_eq!(s.drops(0).iter().map(|(_, v)| v).sum::<u64>(), 0, "{s}");
    s
}

/// The guest sends `frames` under `--tx-rate-limit limit`; `least` is the time the
/// limit implies.
fn tx_under(test: &str, limit: &str, frames: &[Vec<u8>], least: Duration) {
    let Some(mut r) = Rig::on_tap_with(
        test,
        GuestConfig::default(),
        TAP,
        &["--tx-rate-limit", limit],
    ) else {
        return;
    };
    let start = Instant::now();
    r.g.send(0, frames);
    // Read at the peer while they come (the capture socket's buffer holds fewer).
    r.expect_at_peer(frames, "guest frame");
    let took = start.elapsed();
    r.g.wait_tx(0, frames.len());
    let s = settled(&mut r, "tx_packets", frames.len());
    assert!(
        took >= least,
        "{} frames under {limit} took {took:?}, less than the {least:?} the limit implies",
        frames.len()
    );
    assert!(s.queue(0, "tx_throttled") > 0, "{s}");
    assert!(s.queue(0, "tx_throttled_ns") > 0, "{s}");
    assert_eq!(s.queue(0, "rx_throttled"), 0, "{s}");
}

/// The peer sends `frames` towards the guest under `--rx-rate-limit limit`.
fn rx_under(test: &str, limit: &str, frames: &[Vec<u8>], least: Duration) {
    let Some(mut r) = Rig::on_tap_with(
        test,
        GuestConfig::default(),
        TAP,
        &["--rx-rate-limit", limit],
    ) else {
        return;
    };
    r.g.post_rx(0, frames.len(), 2048);
    let start = Instant::now();
    r.inject(frames, ETH_P_TEST);
    let got = r.g.recv(0, frames.len(), 4 * TIMEOUT);
    let took = start.elapsed();
    for (i, (p, f)) in got.iter().zip(frames).enumerate() {
        assert_eq!(&p.frame, f, "frame {i} in guest RX buffers");
    }
    let s = settled(&mut r, "rx_packets", frames.len());
    assert!(
        took >= least,
        "{} frames under {limit} took {took:?}, less than the {least:?} the limit implies",
        frames.len()
    );
    assert!(s.queue(0, "rx_throttled") > 0, "{s}");
    assert!(s.queue(0, "rx_throttled_ns") > 0, "{s}");
    assert_eq!(s.queue(0, "tx_throttled"), 0, "{s}");
}

#[test]
fn a_packets_limit_paces_guest_tx_and_drops_nothing() {
    let frames = guest_frames(100, N, 60, 200);
    // 50 packets per 100 ms: 500 pps, the first 50 at once.
    let least = least_time(N as u64, 50);
    tx_under(
        "a_packets_limit_paces_guest_tx_and_drops_nothing",
        "ops=50/100",
        &frames,
        least,
    );
}

#[test]
fn a_bytes_limit_paces_guest_tx_and_drops_nothing() {
    let frames = guest_frames(200, N, 1000, 1514);
    // 50 kB per 100 ms: 500 kB/s (4 Mbit/s).
    let least = least_time(total_len(&frames), 50_000);
    tx_under(
        "a_bytes_limit_paces_guest_tx_and_drops_nothing",
        "bandwidth=50000/100",
        &frames,
        least,
    );
}

#[test]
fn a_packets_limit_paces_rx_and_drops_nothing() {
    let frames = peer_frames(300, N, 60, 200);
    let least = least_time(N as u64, 50);
    rx_under(
        "a_packets_limit_paces_rx_and_drops_nothing",
        "ops=50/100",
        &frames,
        least,
    );
}

#[test]
fn a_bytes_limit_paces_rx_and_drops_nothing() {
    let frames = peer_frames(400, N, 1000, 1514);
    // RX reads while a token is left: the last packet may go into debt.
    let least = least_time(total_len(&frames) - 1514, 50_000);
    rx_under(
        "a_bytes_limit_paces_rx_and_drops_nothing",
        "bandwidth=50000/100",
        &frames,
        least,
    );
}

#[test]
fn a_ring_throttled_for_an_hour_still_stops_at_once_and_keeps_its_chains() {
    // One packet an hour: the first goes, the others wait on the ring.
    let mut r = Rig::loopback(
        GuestConfig::default(),
        &["--tx-rate-limit", "ops=1/3600000"],
    );
    r.g.post_rx(0, 8, 2048);
    let frames = guest_frames(500, 5, 60, 100);
    r.g.send(0, &frames);
    r.g.wait_tx(0, 1);
    let s = r.d.wait_stats("TX throttled", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_throttled") == 1 && s.queue(0, "tx_packets") == 1
    });
    assert_eq!(s.drops(0).iter().map(|(_, v)| v).sum::<u64>(), 0, "{s}");
    let start = Instant::now();
    let next_avail = r.conn().fe.get_vring_base(1).expect("GET_VRING_BASE tx");
    assert!(
        start.elapsed() < TIMEOUT,
        "stopping a throttled worker took {:?}",
        start.elapsed()
    );
    assert_eq!(
        next_avail, 1,
        "the four throttled chains are still the guest's"
    );
}
