// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The API socket (`--api-socket`) and `vhost-netmem ctl`, over the real socket of a
//! daemon that carries traffic on the loopback uplink, under the default seccomp
//! `kill`: every route, every bad input, a slow client beside a quick one, and the
//! data path still running after all of it.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, BIN};
use common::guest::GuestConfig;
use common::http::{self, unix, unix_raw, SocketFile};
use common::packet::guest_frames;
use common::rig::Rig;
use common::{unique, STATS_TIMEOUT, TIMEOUT};
use serde_json::{json, Value};

/// A daemon with two queue pairs on the loopback uplink, its API on a fresh socket,
/// and `n[pair]` frames looped on each pair; returns the rig and the socket path.
fn rig_with_traffic(n: [usize; 2], extra: &[&str]) -> (Rig, SocketFile) {
    let api = SocketFile::new(".api");
    let api_s = api.arg();
    let mut args = vec!["--api-socket", &api_s];
    args.extend_from_slice(extra);
    let cfg = GuestConfig {
        pairs: 2,
        ..GuestConfig::default()
    };
    let mut rig = Rig::loopback(cfg, &args);
    for (pair, count) in n.iter().enumerate() {
        let seed = u32::try_from(pair).unwrap() + 3;
        rig.g
            .loopback_roundtrip(pair, &guest_frames(seed, *count, 60, 1514));
    }
    rig.d.wait_stats("the looped frames", STATS_TIMEOUT, |s| {
        (0..2).all(|p| {
            s.queue(p, "tx_packets") == n[p] as u64 && s.queue(p, "rx_packets") == n[p] as u64
        })
    });
    (rig, api)
}

/// The stats file once two readings 0.6 s apart (it is rewritten every 0.5 s) agree.
fn settled_stats(d: &Daemon) -> Value {
    let read = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(&d.stats_file).unwrap()).unwrap()
    };
    let deadline = Instant::now() + STATS_TIMEOUT;
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(600));
        let now = read();
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "the stats file never settled");
        last = now;
    }
}

fn ctl(api: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("ctl")
        .arg("--api-socket")
        .arg(api)
        .args(args)
        .output()
        .expect("run vhost-netmem ctl")
}

#[test]
fn every_route_answers_with_what_the_daemon_has() {
    let (mut rig, api_file) = rig_with_traffic([5, 9], &[]);
    let api = api_file.0.as_path();
    let file = settled_stats(&rig.d);

    let r = unix(api, "GET", "/stats", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("Content-Type").as_deref(),
        Some("application/json")
    );
    let stats = r.json();
    assert_eq!(
        stats["queues"], file["queues"],
        "GET /stats and the stats file differ"
    );
    assert_eq!(stats["total"]["tx_packets"], 14);

    let r = unix(api, "GET", "/metrics", "");
    assert_eq!(r.status, 200);
    assert!(r
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for (pair, n) in [(0, 5.0), (1, 9.0)] {
        let line = format!("vhost_netmem_tx_packets_total{{queue=\"{pair}\"}}");
        assert_eq!(http::sample(&text, &line), Some(n), "{line} in\n{text}");
        let line = format!("vhost_netmem_rx_bytes_total{{queue=\"{pair}\"}}");
        let want = file["queues"][pair]["rx_bytes"].as_f64().unwrap();
        assert_eq!(http::sample(&text, &line), Some(want), "{line}");
    }

    let r = unix(api, "GET", "/config", "");
    assert_eq!(r.status, 200);
    let config = r.json();
    assert_eq!(config["uplink"], json!({"test": "loopback"}));
    assert_eq!(config["queue_pairs"], 2);
    assert_eq!(config["api_socket"], json!(api));
    assert_eq!(config["socket"], json!({"listen": rig.d.socket}));

    let r = unix(api, "GET", "/", "");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("/queues/PAIR/rate-limit"));

    // Rate limits: none at first; a PUT is in force when its reply comes.
    let r = unix(api, "GET", "/queues/1/rate-limit", "");
    assert_eq!((r.status, r.json()), (200, json!({"tx": {}, "rx": {}})));
    let limits = json!({
        "tx": {"bandwidth": {"size": 125000, "one_time_burst": 0, "refill_time_ms": 100}},
        "rx": {"ops": {"size": 1000, "one_time_burst": 50, "refill_time_ms": 1000}}
    });
    let start = Instant::now();
    let r = unix(api, "PUT", "/queues/1/rate-limit", &limits.to_string());
    let put_took = start.elapsed();
    assert_eq!((r.status, r.json()), (200, limits.clone()), "{}", r.text());
    let r = unix(api, "GET", "/queues/1/rate-limit", "");
    assert_eq!(
        r.json(),
        limits,
        "the PUT is not what GET shows right after it"
    );
    assert!(
        put_took < Duration::from_millis(100),
        "a PUT took {put_took:?}, beyond 100 ms"
    );
    let r = unix(api, "GET", "/queues/0/rate-limit", "");
    assert_eq!(r.json(), json!({"tx": {}, "rx": {}}), "pair 0 changed too");
    let r = unix(api, "PUT", "/queues/1/rate-limit", "{}");
    assert_eq!(r.status, 200);
    assert_eq!(
        unix(api, "GET", "/queues/1/rate-limit", "").json(),
        json!({"tx": {}, "rx": {}})
    );

    rig.g.loopback_roundtrip(0, &guest_frames(11, 4, 60, 1514));
    rig.d.assert_running("after every route");
}

#[test]
fn bad_input_gets_a_4xx_with_a_message_and_the_data_path_runs_on() {
    let (mut rig, api_file) = rig_with_traffic([3, 3], &[]);
    let api = api_file.0.as_path();
    let put =
        |pair: &str, body: &str| unix(api, "PUT", &format!("/queues/{pair}/rate-limit"), body);
    let cases: Vec<(&str, http::Reply, u16, &str)> = vec![
        ("unknown route", unix(api, "GET", "/nothing", ""), 404, "no route"),
        ("unknown queue", unix(api, "GET", "/queues/2/rate-limit", ""), 404, "does not exist"),
        ("negative queue", put("-1", "{}"), 404, "does not exist"),
        ("queue not a number", put("zero", "{}"), 404, "does not exist"),
        ("wrong method", unix(api, "DELETE", "/queues/0/rate-limit", ""), 405, "not allowed"),
        ("wrong method on stats", unix(api, "PUT", "/stats", "{}"), 405, "not allowed"),
        ("malformed JSON", put("0", "{\"tx\": {"), 400, "invalid rate limit"),
        ("not an object", put("0", "[1, 2]"), 400, "invalid rate limit"),
        ("unknown field", put("0", r#"{"tx": {"bandwith": {"size": 1, "refill_time_ms": 1}}}"#), 400, "unknown field"),
        ("negative rate", put("0", r#"{"tx": {"bandwidth": {"size": -100, "refill_time_ms": 100}}}"#), 400, "invalid value"),
        ("zero size", put("0", r#"{"rx": {"ops": {"size": 0, "refill_time_ms": 100}}}"#), 400, "size must be at least 1"),
        ("absurd refill", put("0", r#"{"rx": {"ops": {"size": 10, "refill_time_ms": 86400000000}}}"#), 400, "refill_time_ms must be between"),
        ("absurd size", put("0", r#"{"tx": {"bandwidth": {"size": 1e40, "refill_time_ms": 100}}}"#), 400, "invalid"),
        ("overflowing burst", put("0", r#"{"tx": {"bandwidth": {"size": 18446744073709551615, "one_time_burst": 1, "refill_time_ms": 100}}}"#), 400, "overflows"),
        ("body too large", unix(api, "PUT", "/queues/0/rate-limit", &" ".repeat(100 * 1024)), 413, "larger than"),
        ("head too large", unix_raw(api, format!("GET /stats HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(16 * 1024)).as_bytes()), 431, "head larger"),
        ("not HTTP", unix_raw(api, b"\x16\x03\x01 hello\r\n\r\n"), 400, "malformed request"),
        ("chunked body", unix_raw(api, b"PUT /queues/0/rate-limit HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"), 501, "Content-Length"),
    ];
    for (what, r, status, msg) in &cases {
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let e = r.error();
        assert!(e.contains(msg), "{what}: {e:?} does not say {msg:?}");
    }
    let r = unix(api, "DELETE", "/queues/0/rate-limit", "");
    assert_eq!(r.header("Allow").as_deref(), Some("GET, PUT"));
    // No bad PUT changed a limit.
    for pair in ["0", "1"] {
        let r = unix(api, "GET", &format!("/queues/{pair}/rate-limit"), "");
        assert_eq!(r.json(), json!({"tx": {}, "rx": {}}), "pair {pair}");
    }
    rig.g.loopback_roundtrip(1, &guest_frames(21, 6, 60, 1514));
    rig.d.assert_running("after the bad requests");
}

/// A client that sends half a request and waits does not hold the others up; its
/// connection is closed at the deadline (408), and one that never sends is dropped.
#[test]
fn a_slow_client_holds_only_its_own_connection() {
    let (mut rig, api_file) = rig_with_traffic([2, 2], &[]);
    let api = api_file.0.as_path();
    let mut slow = UnixStream::connect(api).unwrap();
    slow.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let silent: Vec<UnixStream> = (0..8).map(|_| UnixStream::connect(api).unwrap()).collect();
    let start = Instant::now();
    let r = unix(api, "GET", "/stats", "");
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut slow, &mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    drop(silent);
    rig.g.loopback_roundtrip(0, &guest_frames(5, 3, 60, 1514));
    rig.d.assert_running("after the slow clients");
}

#[test]
fn ctl_prints_replies_and_fails_with_the_servers_message() {
    let (mut rig, api_file) = rig_with_traffic([4, 1], &[]);
    let api = api_file.0.as_path();
    let out = ctl(api, &["stats"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["queues"][0]["tx_packets"], 4);

    let out = ctl(api, &["metrics"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        http::sample(&text, "vhost_netmem_tx_packets_total{queue=\"1\"}"),
        Some(1.0)
    );

    let out = ctl(api, &["config"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["queue_pairs"], 2);

    let out = ctl(api, &["rate-limit", "get", "0"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"tx": {}, "rx": {}}));
    let limits = r#"{"rx": {"bandwidth": {"size": 50000, "refill_time_ms": 10}}}"#;
    let out = ctl(api, &["rate-limit", "set", "0", limits]);
    assert!(out.status.success(), "{out:?}");
    let out = ctl(api, &["rate-limit", "get", "0"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rx"]["bandwidth"]["size"], 50000);

    // The README's example, as written there.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let operating = &readme[readme
        .find("## Operating")
        .expect("README: no Operating section")..];
    let start = operating
        .find("rate-limit set 1 \\\n")
        .expect("README: no rate-limit set 1 example");
    let quoted = &operating[start..];
    let json = quoted
        .split('\'')
        .nth(1)
        .expect("README: the example's JSON in single quotes");
    let out = ctl(api, &["rate-limit", "set", "1", json]);
    assert!(out.status.success(), "the README's rate limit: {out:?}");
    let out = ctl(api, &["rate-limit", "get", "1"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::from_str::<Value>(json)
            .unwrap()
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o["rx"]["ops"]["one_time_burst"] = json!(50);
                o["tx"]["bandwidth"]["one_time_burst"] = json!(0);
                Value::Object(o)
            })
            .unwrap()
    );
    for cmd in [
        "ctl --api-socket /tmp/vnm.api stats",
        "ctl --api-socket /tmp/vnm.api metrics",
        "ctl --api-socket /tmp/vnm.api config",
        "ctl --api-socket /tmp/vnm.api rate-limit get 0",
        "--metrics 127.0.0.1:9464 --api-socket /tmp/vnm.api",
    ] {
        assert!(
            operating.contains(cmd),
            "README's Operating section lacks {cmd:?}"
        );
    }

    for (args, msg) in [
        (
            vec!["rate-limit", "get", "7"],
            "404 Not Found: queue pair \"7\" does not exist",
        ),
        (vec!["rate-limit", "get", "-3"], "does not exist"),
        (
            vec!["rate-limit", "set", "0", "{oops"],
            "400 Bad Request: invalid rate limit",
        ),
        (
            vec![
                "rate-limit",
                "set",
                "1",
                r#"{"tx": {"ops": {"size": -1, "refill_time_ms": 5}}}"#,
            ],
            "400 Bad Request",
        ),
    ] {
        let out = ctl(api, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err:?} lacks {msg:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = ctl(Path::new("/nonexistent/vnm.api"), &["stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to /nonexistent/vnm.api"));
    rig.g.loopback_roundtrip(1, &guest_frames(8, 2, 60, 1514));
    rig.d.assert_running("after the ctl commands");
}

#[test]
fn help_explains_the_options_and_the_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--metrics <ADDR>",
        "--api-socket <PATH>",
        "only loopback",
        "unix:PATH",
        "ctl",
    ] {
        assert!(text.contains(want), "--help lacks {want:?}:\n{text}");
    }
    let out = Command::new(BIN).args(["ctl", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["stats", "metrics", "config", "rate-limit", "--api-socket"] {
        assert!(text.contains(want), "ctl --help lacks {want:?}:\n{text}");
    }
}

/// The addresses are checked at start-up: a clear error and a non-zero exit.
#[test]
fn an_address_in_use_or_off_loopback_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let sock = format!("{}.sock", unique("/tmp/vnmt"));
    for (args, msg) in [
        (
            vec!["--metrics", addr.as_str()],
            format!("--metrics {addr} is in use by another process"),
        ),
        (
            vec!["--metrics", "0.0.0.0:9464"],
            "only loopback addresses".to_string(),
        ),
        (
            vec!["--metrics", "example.org:80"],
            "expected 127.0.0.1:PORT".to_string(),
        ),
    ] {
        let mut full = vec!["--socket", sock.as_str(), "--uplink", "null"];
        full.extend(args.iter().copied());
        let mut d = Daemon::spawn_raw(&full);
        let Some(st) = d.wait_exit(TIMEOUT) else {
            d.fail(&format!("{args:?}: still running"));
        };
        assert_eq!(st.code(), Some(1), "{args:?}: {st}\n{}", d.stderr());
        assert!(
            d.stderr().contains(&msg),
            "{args:?}: no {msg:?} in\n{}",
            d.stderr()
        );
        assert!(
            !Path::new(&sock).exists(),
            "{args:?}: the vhost-user socket was left behind"
        );
    }
    // An API socket another daemon serves.
    let (mut rig, api_file) = rig_with_traffic([1, 1], &[]);
    let api = api_file.0.as_path();
    let api_s = api.display().to_string();
    let mut d = Daemon::spawn_raw(&[
        "--socket",
        &sock,
        "--uplink",
        "null",
        "--api-socket",
        &api_s,
    ]);
    let st = d.wait_exit(TIMEOUT).expect("the second daemon exits");
    assert_eq!(st.code(), Some(1));
    assert!(
        d.stderr().contains("--api-socket") && d.stderr().contains("in use"),
        "{}",
        d.stderr()
    );
    assert_eq!(
        unix(api, "GET", "/stats", "").status,
        200,
        "the first daemon's API went away"
    );
    rig.d.assert_running("after the second daemon was refused");
}

/// The server thread runs under a filter of its own: a syscall outside it ends the
/// process (debug builds: `VNM_SECCOMP_SELFTEST=api` makes one right after the
/// filter is in).
#[test]
fn the_api_thread_is_sandboxed() {
    if cfg!(not(debug_assertions)) {
        eprintln!("SKIPPED: VNM_SECCOMP_SELFTEST exists in debug builds only");
        return;
    }
    let api = format!("{}.api", unique("/tmp/vnmt"));
    let sock = format!("{}.sock", unique("/tmp/vnmt"));
    let mut cmd = Command::new(BIN);
    cmd.args(["--socket", &sock, "--uplink", "null", "--api-socket", &api])
        .env("VNM_SECCOMP_SELFTEST", "api");
    let mut d = Daemon::start(cmd, PathBuf::from(&sock), PathBuf::new());
    let st = d
        .wait_exit(TIMEOUT)
        .unwrap_or_else(|| d.fail("still running"));
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st}\n{}", d.stderr());
    let _ = std::fs::remove_file(&api);
}

/// `--config FILE` takes both options as keys, as it takes every long option.
#[test]
fn the_options_can_come_from_a_config_file() {
    let api = SocketFile::new(".api");
    let sock = SocketFile::new(".sock");
    let port = http::free_port();
    let file = PathBuf::from(format!("{}.toml", unique("/tmp/vnmt")));
    std::fs::write(
        &file,
        format!(
            "socket = \"{}\"\nuplink = \"null\"\napi-socket = \"{}\"\nmetrics = \"127.0.0.1:{port}\"\n",
            sock.arg(),
            api.arg()
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn_raw(&["--config", &file.display().to_string()]);
    d.wait_stderr("serving the API on", TIMEOUT);
    let r = unix(&api.0, "GET", "/config", "");
    assert_eq!(r.json()["metrics"], format!("127.0.0.1:{port}"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http::tcp_get(addr, "/metrics").status, 200);
    d.assert_running("after serving both");
    let _ = std::fs::remove_file(&file);
}

/// Issue 13: a limit PUT over the API paces the very next packets, without a reconnect
/// (the worker picks the change up at the start of the round the guest's kick brings),
/// and removing it lets the held chains go at once; nothing is dropped.
#[test]
fn a_limit_put_at_run_time_paces_the_next_packets() {
    let (mut rig, api_file) = rig_with_traffic([4, 4], &[]);
    let api = api_file.0.as_path();
    // A bucket of 8 packets that refills in 10 s: of a burst, 8 pass soon, no more.
    let limits = json!({"tx": {"ops": {"size": 8, "refill_time_ms": 10000}}});
    let r = unix(api, "PUT", "/queues/0/rate-limit", &limits.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let used = |rig: &Rig| rig.g.vq(1).ring.used_idx(&rig.g.mem);
    let before = used(&rig);
    rig.g.send(0, &guest_frames(60, 64, 60, 200));
    std::thread::sleep(Duration::from_millis(300));
    let passed = used(&rig).wrapping_sub(before);
    assert!(
        (8..=9).contains(&passed),
        "{passed} of 64 chains taken under a limit of 8 per 10 s set before they were sent"
    );
    rig.d.wait_stats("TX throttled", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_throttled") >= 1
    });
    // The other pair is not limited.
    rig.g.loopback_roundtrip(1, &guest_frames(70, 16, 60, 200));
    // Removed: the rest go without waiting for the refill.
    let r = unix(api, "PUT", "/queues/0/rate-limit", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let start = Instant::now();
    while used(&rig).wrapping_sub(before) < 64 {
        assert!(
            start.elapsed() < TIMEOUT,
            "{} of 64 chains taken after the limit was removed",
            used(&rig).wrapping_sub(before)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = rig.d.wait_stats("all 64 sent", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 4 + 64
    });
    assert_eq!(s.queue(0, "tx_drop_uplink"), 0, "nothing dropped");
}
