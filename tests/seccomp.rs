// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! seccomp: a syscall outside a thread's allowlist kills the daemon with the default
//! `--seccomp kill`, and goes through with `--seccomp log`, named in the kernel log.
//!
//! The debug build's `VNM_SECCOMP_SELFTEST=control|worker` makes that thread call
//! `socket(AF_INET6)` (allowed to no thread) right after installing its filter. Every
//! case runs in this one test, so the variable set here reaches only the daemons
//! started here.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::guest::{Guest, GuestConfig};
use common::packet::guest_frames;
use common::rig::Rig;
use common::TIMEOUT;

const SELFTEST: &str = "VNM_SECCOMP_SELFTEST";

/// The kernel's seccomp audit records (type=1326) for `pid`, or None if `dmesg`
/// cannot be read here.
fn audit_records(pid: u32) -> Option<Vec<String>> {
    let out = std::process::Command::new("dmesg").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let needle = format!(" pid={pid} ");
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("type=1326") && l.contains(&needle))
            .map(str::to_owned)
            .collect(),
    )
}

/// Wait for a record naming `socket` (and no other syscall) for `pid`.
fn expect_logged(pid: u32, who: &str) {
    let want = format!(" syscall={} ", libc::SYS_socket);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let Some(records) = audit_records(pid) else {
            eprintln!("{who}: dmesg is not readable here; log mode's record not checked");
            return;
        };
        if records.iter().any(|l| l.contains(&want)) {
            let others: Vec<&String> = records.iter().filter(|l| !l.contains(&want)).collect();
            assert!(
                others.is_empty(),
                "{who}: syscalls outside the lists: {others:#?}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: no type=1326 record with{want}for pid {pid}: {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn expect_killed(d: &mut Daemon, who: &str) {
    let Some(status) = d.wait_exit(TIMEOUT) else {
        d.fail(&format!("{who}: still running after the forbidden syscall"));
    };
    if status.signal() != Some(libc::SIGSYS) {
        d.fail(&format!("{who}: ended with {status}, not SIGSYS"));
    }
    assert!(
        !d.stderr().contains("seccomp self-test"),
        "{who}: the forbidden call returned"
    );
}

#[test]
fn a_forbidden_syscall_is_refused_with_kill_and_logged_with_log() {
    if cfg!(not(debug_assertions)) {
        eprintln!("SKIPPED: VNM_SECCOMP_SELFTEST exists in debug builds only");
        return;
    }
    let line =
        |who: &str| format!("seccomp self-test: socket(AF_INET6) from the {who} thread returned ");

    // The control thread, default mode: killed as soon as its filter is in.
    std::env::set_var(SELFTEST, "control");
    let mut d = Daemon::spawn(&["--uplink", "null"], None);
    expect_killed(&mut d, "control, kill");

    // The control thread, log mode: the call goes through, the daemon serves on.
    let mut d = Daemon::spawn(&["--uplink", "null", "--seccomp", "log"], None);
    let text = d.wait_stderr(&line("control"), TIMEOUT);
    assert!(!text.contains(&format!("{}-", line("control"))), "{text}");
    d.connect(TIMEOUT);
    d.assert_running("after the logged call");
    expect_logged(d.pid(), "control, log");
    drop(d);

    // A queue pair's worker, default mode: the daemon dies when the rings start.
    std::env::set_var(SELFTEST, "worker");
    let cfg = GuestConfig::default();
    let mut d = Rig::spawn_daemon(&cfg, &["--uplink", "loopback"], &[], None);
    let mut g = Guest::new(cfg.clone());
    // The set-up may or may not complete before the worker is killed.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.attach(&mut d)));
    expect_killed(&mut d, "worker, kill");

    // A worker in log mode: the call goes through and traffic still flows.
    let mut rig = Rig::loopback(cfg, &["--seccomp", "log"]);
    let text = rig.d.wait_stderr(&line("worker"), TIMEOUT);
    assert!(!text.contains(&format!("{}-", line("worker"))), "{text}");
    rig.g.loopback_roundtrip(0, &guest_frames(7, 8, 60, 1514));
    rig.d
        .assert_running("after the worker's logged call and traffic");
    expect_logged(rig.d.pid(), "worker, log");
    std::env::remove_var(SELFTEST);
}
