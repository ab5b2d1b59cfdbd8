// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A worker thread over a test guest's TX ring and a scripted uplink: rate limits
//! changed at run time through [`RateLimits`], as the API socket changes them.

use std::time::{Duration, Instant};

use super::*;
use crate::datapath::test_guest::driver::{Buf, SplitRing};
use crate::datapath::test_guest::{FakeUplink, TestGuest};
use crate::ratelimit::{BucketConfig, LimitConfig, PairLimits};
use crate::virtio::features::VIRTIO_F_VERSION_1;
use crate::virtio::VirtioNetHdr;

/// Wait up to 5 s for `what` to hold.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One packet an hour on TX.
fn an_hour_per_packet() -> PairLimits {
    PairLimits {
        tx: LimitConfig {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 3_600_000,
            }),
        },
        rx: LimitConfig::default(),
    }
}

#[test]
fn a_limit_removed_at_run_time_ends_the_throttle_at_once() {
    let g = TestGuest::new();
    let mut drv = SplitRing::new(&g, 0, 16);
    // The ring as the worker takes it over: before the guest posts.
    let setup = g.setup(&drv);
    for i in 0..5u8 {
        let hdr = g.buf(0, 12);
        g.write(hdr, &VirtioNetHdr::default().to_bytes());
        let data = g.buf(1, 64);
        g.write(data, &[i; 64]);
        drv.add_chain(&g, &[Buf::ro(hdr, 12), Buf::ro(data, 64)]);
    }
    drv.publish(&g);
    let limits = Arc::new(RateLimits::new(1, an_hour_per_packet()));
    let metrics = Arc::new(QueueMetrics::default());
    let worker = PairWorker::spawn(WorkerSpec {
        pair: 0,
        rx: None,
        tx: Some(setup),
        features: Features::from_bits(1 << VIRTIO_F_VERSION_1),
        mtu: 1500,
        max_queue_size: 256,
        memory: g.shared(),
        metrics: Arc::clone(&metrics),
        uplink: Box::new(FakeUplink::default()),
        busy_poll: None,
        tx_holdoff: None,
        rate_limits: Arc::clone(&limits),
    })
    .expect("spawn the worker");
    wait_for("one packet sent, then throttled", || {
        metrics.tx_packets.get() == 1 && metrics.tx_throttled.get() == 1
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        metrics.tx_packets.get(),
        1,
        "the throttle let a packet through"
    );
    // The API's PUT: no limit any more. The worker sees it within its recheck period
    // and sends the rest without waiting out the hour.
    limits.set(0, PairLimits::default()).unwrap();
    wait_for("the other four sent", || metrics.tx_packets.get() == 5);
    let stopped = worker.stop();
    assert_eq!(stopped.tx, Some((5, 5)));
    assert_eq!(metrics.tx_throttled.get(), 1);
    assert!(
        metrics.tx_throttled_ns.get() >= 50_000_000,
        "throttled for {} ns, at least the 50 ms waited",
        metrics.tx_throttled_ns.get()
    );
    assert_eq!(metrics.snapshot().drops(), 0);
}

#[test]
fn a_limit_set_at_run_time_throttles_a_running_worker() {
    let g = TestGuest::new();
    let mut drv = SplitRing::new(&g, 0, 16);
    let limits = Arc::new(RateLimits::new(1, PairLimits::default()));
    let metrics = Arc::new(QueueMetrics::default());
    let setup = g.setup(&drv);
    let kick_fd = setup.kick.try_clone().unwrap();
    let worker = PairWorker::spawn(WorkerSpec {
        pair: 0,
        rx: None,
        tx: Some(setup),
        features: Features::from_bits(1 << VIRTIO_F_VERSION_1),
        mtu: 1500,
        max_queue_size: 256,
        memory: g.shared(),
        metrics: Arc::clone(&metrics),
        uplink: Box::new(FakeUplink::default()),
        busy_poll: None,
        tx_holdoff: None,
        rate_limits: Arc::clone(&limits),
    })
    .expect("spawn the worker");
    let post = |drv: &mut SplitRing, n: u8| {
        for i in 0..n {
            let hdr = g.buf(0, 12);
            g.write(hdr, &VirtioNetHdr::default().to_bytes());
            let data = g.buf(1, 64);
            g.write(data, &[i; 64]);
            drv.add_chain(&g, &[Buf::ro(hdr, 12), Buf::ro(data, 64)]);
        }
        drv.publish(&g);
        kick_fd.write(1).unwrap();
    };
    // Running, unlimited.
    post(&mut drv, 1);
    wait_for("the first packet sent", || metrics.tx_packets.get() == 1);
    limits.set(0, an_hour_per_packet()).unwrap();
    post(&mut drv, 3);
    wait_for("throttled", || metrics.tx_throttled.get() == 1);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        metrics.tx_packets.get(),
        2,
        "the new bucket's one packet, no more"
    );
    // A stop while throttled is at once and leaves the two chains to the guest.
    let start = Instant::now();
    let stopped = worker.stop();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stopped.tx, Some((2, 2)));
}

/// What a TX look moved decides the holdoff: one small packet is sparse, two or a
/// large one a stream, half the ring or more a flood.
#[test]
fn a_look_is_classified_by_what_it_moved() {
    use super::classify;
    use crate::datapath::state::Moved;
    assert_eq!(classify(1, 66, 256), Moved::Sparse);
    assert_eq!(classify(1, 1023, 256), Moved::Sparse);
    assert_eq!(classify(1, 1024, 256), Moved::Stream);
    assert_eq!(classify(2, 120, 256), Moved::Stream);
    assert_eq!(classify(127, 127 * 60, 256), Moved::Stream);
    assert_eq!(classify(128, 128 * 60, 256), Moved::Flood);
    assert_eq!(classify(256, 256 * 1500, 256), Moved::Flood);
    assert_eq!(classify(1, 60, 2), Moved::Flood, "a tiny ring");
}
