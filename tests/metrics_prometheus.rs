// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `--metrics`: the exposition passes `promtool check metrics`, and a real Prometheus
//! server scraping the daemon (under the default seccomp `kill`) finds every queue
//! counter with the value the stats file shows, after traffic on the loopback uplink.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::guest::GuestConfig;
use common::http::{self, free_port, tcp_get, SocketFile};
use common::packet::guest_frames;
use common::prometheus::{have, promtool_check, Prometheus};
use common::rig::Rig;
use common::STATS_TIMEOUT;
use serde_json::Value;

/// A daemon serving `--metrics metrics` with two queue pairs, 6 frames looped on pair
/// 0 and 13 on pair 1.
fn rig_with_traffic(metrics: &str) -> Rig {
    let cfg = GuestConfig {
        pairs: 2,
        ..GuestConfig::default()
    };
    let mut rig = Rig::loopback(cfg, &["--metrics", metrics]);
    rig.g.loopback_roundtrip(0, &guest_frames(1, 6, 60, 1514));
    rig.g.loopback_roundtrip(1, &guest_frames(2, 13, 60, 1514));
    rig.d.wait_stats("the looped frames", STATS_TIMEOUT, |s| {
        s.queue(0, "rx_packets") == 6 && s.queue(1, "rx_packets") == 13
    });
    rig
}

#[test]
fn promtool_accepts_the_exposition_on_tcp_and_unix() {
    if !have(
        "promtool",
        "promtool_accepts_the_exposition_on_tcp_and_unix",
    ) {
        return;
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut rig = rig_with_traffic(&addr.to_string());
    let r = tcp_get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let (ok, out) = promtool_check(&text);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics: {out}\n{text}"
    );
    for want in [
        "# HELP vhost_netmem_tx_packets_total ",
        "# TYPE vhost_netmem_drops_total counter",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "vhost_netmem_control_requests_total ",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    assert_eq!(
        http::sample(&text, "vhost_netmem_tx_packets_total{queue=\"1\"}"),
        Some(13.0)
    );
    // The metrics address serves the exposition only.
    assert_eq!(tcp_get(addr, "/stats").status, 404);
    // Something promtool refuses, so that its verdict above means something.
    let (ok, _) = promtool_check("# TYPE x counter\nx{a=\"1\" 3\n");
    assert!(!ok, "promtool accepted a broken exposition");
    rig.d.assert_running("after the scrapes");

    let path = SocketFile::new(".metrics");
    let mut rig = rig_with_traffic(&format!("unix:{}", path.arg()));
    let r = http::unix(&path.0, "GET", "/metrics", "");
    assert_eq!(r.status, 200);
    let (ok, out) = promtool_check(&r.text());
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics (unix): {out}"
    );
    rig.d.assert_running("after the unix scrape");
}

/// The value of the series of `result` whose `queue` label is `pair`.
fn series_value(result: &[Value], pair: usize) -> Option<f64> {
    result
        .iter()
        .find(|s| s["metric"]["queue"].as_str() == Some(pair.to_string().as_str()))
        .and_then(|s| s["value"][1].as_str()?.parse().ok())
}

#[test]
fn a_prometheus_server_scrapes_the_stats_file_values() {
    if !have(
        "prometheus",
        "a_prometheus_server_scrapes_the_stats_file_values",
    ) {
        return;
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut rig = rig_with_traffic(&addr.to_string());
    let prom = Prometheus::start(addr);
    // Nothing moves any more: the stats file is what the scrapes see.
    std::thread::sleep(Duration::from_millis(600));
    let stats = rig.d.stats().expect("stats file");
    let mut checked = 0;
    for name in [
        "tx_packets",
        "tx_bytes",
        "rx_packets",
        "rx_bytes",
        "notifications",
        "tx_batches",
    ] {
        let want: Vec<f64> = (0..2).map(|p| stats.queue(p, name) as f64).collect();
        assert!(
            want.iter().all(|v| *v > 0.0),
            "{name}: {want:?} (no traffic?)"
        );
        let q = format!("vhost_netmem_{name}_total{{job=\"vhost-netmem\"}}");
        let result = prom
            .wait_query(&q, Duration::from_secs(60), |r| {
                (0..2).all(|p| series_value(r, p) == Some(want[p]))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result.len(), 2, "{q}: {result:?}");
        checked += 1;
    }
    assert_eq!(checked, 6);
    // A drop family series exists (zero here) with its labels.
    let r = prom
        .wait_query(
            "vhost_netmem_drops_total{direction=\"rx\",reason=\"truncated\"}",
            Duration::from_secs(10),
            |r| r.len() == 2,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.iter().all(|s| s["value"][1] == "0"), "{r:?}");
    let up = prom
        .wait_query("up{job=\"vhost-netmem\"}", Duration::from_secs(10), |r| {
            r.first().is_some_and(|s| s["value"][1] == "1")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(up.len(), 1);
    rig.d.assert_running("after Prometheus' scrapes");
}
