//! Command line: bad values give one clear error line and a non-zero exit, never a panic
//! or a backtrace (the daemon runs with RUST_BACKTRACE=1 so a panic could not hide).
//! Every case uses `--uplink null`, so nothing is created outside the tests' namespaces.

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::guest::GuestConfig;
use common::packet::guest_frames;
use common::rig::Rig;
use common::{unique, TIMEOUT};

/// Run the daemon with `args`; expect a non-zero exit and exactly one error line that
/// mentions `mention`.
fn refused(args: &[&str], mention: &str) {
    let mut d = Daemon::spawn_raw(args);
    let Some(status) = d.wait_exit(TIMEOUT) else {
        d.fail(&format!("{args:?}: still running after {TIMEOUT:?}"));
    };
    let err = d.stderr();
    assert!(!status.success(), "{args:?}: exit status 0; stderr:\n{err}");
    assert!(
        status.code().is_some(),
        "{args:?}: killed by a signal ({status}); stderr:\n{err}"
    );
    for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "{args:?}: stderr shows {bad:?}:\n{err}");
    }
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line, got {}:\n{err}",
        lines.len()
    );
    assert!(
        lines[0].to_lowercase().contains("error") && lines[0].contains(mention),
        "{args:?}: the error line does not name {mention:?}: {}",
        lines[0]
    );
}

fn socket() -> String {
    format!("{}.sock", unique("/tmp/vnmt-cli"))
}

#[test]
fn queue_size_not_a_power_of_two() {
    let s = socket();
    refused(
        &["--socket", &s, "--uplink", "null", "--queue-size", "100"],
        "--queue-size",
    );
}

#[test]
fn mtu_too_large() {
    let s = socket();
    refused(
        &["--socket", &s, "--uplink", "null", "--mtu", "70000"],
        "--mtu",
    );
}

#[test]
fn multicast_mac() {
    let s = socket();
    refused(
        &[
            "--socket",
            &s,
            "--uplink",
            "null",
            "--mac",
            "01:00:5e:00:00:01",
        ],
        "--mac",
    );
}

#[test]
fn socket_in_a_missing_directory() {
    let dir = unique("/tmp/vnmt-missing-dir");
    let s = format!("{dir}/vnm.sock");
    refused(&["--socket", &s, "--uplink", "null"], &dir);
}

/// A second daemon given the socket path of a running loopback daemon (started with
/// `extra` options) is refused; the first keeps running and then serves a guest.
fn socket_in_use_case(extra: &[&str]) {
    let cfg = GuestConfig::default();
    let mut first = Rig::spawn_daemon(&cfg, &["--uplink", "loopback"], extra, None);
    first.wait_socket_file(TIMEOUT);
    let path = first.socket.display().to_string();
    refused(&["--socket", &path, "--uplink", "null"], "in use");
    // A --once daemon that took the refused daemon's probe for its frontend exits now.
    std::thread::sleep(Duration::from_millis(200));
    first.assert_running(&format!(
        "({extra:?}) after a second daemon was refused its socket path"
    ));
    let mut r = Rig::attach(first, cfg);
    r.g.loopback_roundtrip(0, &guest_frames(1, 4, 60, 1514));
}

#[test]
fn socket_in_use_is_refused_and_the_first_daemon_keeps_serving() {
    socket_in_use_case(&[]);
}

#[test]
fn socket_in_use_probe_does_not_end_a_once_daemon() {
    // With --once the first daemon exits after its first frontend: a second daemon
    // checking whether the path is in use must not count as that frontend.
    socket_in_use_case(&["--once"]);
}
