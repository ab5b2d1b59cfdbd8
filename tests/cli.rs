// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
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
    refused_daemon(Daemon::spawn_raw(args), args, mention);
}

/// As [`refused`], for a daemon started with `env` added to its environment.
fn refused_with_env(args: &[&str], env: &[(&str, &str)], mention: &str) {
    let mut cmd = std::process::Command::new(common::daemon::BIN);
    cmd.args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1");
    let d = Daemon::start(cmd, std::path::PathBuf::new(), std::path::PathBuf::new());
    refused_daemon(d, args, mention);
}

fn refused_daemon(d: Daemon, args: &[&str], mention: &str) {
    let (_, err) = exited_with_an_error(d, args);
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

/// Wait for a daemon that must refuse to start: it exits by itself with a non-zero
/// status and no panic. Its exit code and stderr.
fn exited_with_an_error(mut d: Daemon, args: &[&str]) -> (i32, String) {
    let Some(status) = d.wait_exit(TIMEOUT) else {
        d.fail(&format!("{args:?}: still running after {TIMEOUT:?}"));
    };
    let err = d.stderr();
    assert!(!status.success(), "{args:?}: exit status 0; stderr:\n{err}");
    let Some(code) = status.code() else {
        panic!("{args:?}: killed by a signal ({status}); stderr:\n{err}");
    };
    for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "{args:?}: stderr shows {bad:?}:\n{err}");
    }
    (code, err)
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

/// Issue 10, case 7: an existing regular file at the socket path is refused and kept.
#[test]
fn socket_path_that_is_a_regular_file_is_refused_and_kept() {
    let s = socket();
    std::fs::write(&s, b"precious").unwrap();
    refused(&["--socket", &s, "--uplink", "null"], "not a socket");
    let kept = std::fs::read(&s);
    let _ = std::fs::remove_file(&s);
    assert_eq!(kept.expect("the file at --socket was deleted"), b"precious");
}

/// Issue 10, case 7: a directory at the socket path gets its own message.
#[test]
fn socket_path_that_is_a_directory_is_refused() {
    let s = socket();
    std::fs::create_dir(&s).unwrap();
    let mut d = Daemon::spawn_raw(&["--socket", &s, "--uplink", "null"]);
    let st = d.wait_exit(TIMEOUT);
    let err = d.stderr();
    let _ = std::fs::remove_dir(&s);
    assert!(st.is_some_and(|st| !st.success()), "not refused: {err}");
    assert!(
        err.contains("is a directory") && !err.contains("in use"),
        "unclear message: {err}"
    );
}

/// A stale socket file (nobody listening) is still replaced.
#[test]
fn stale_socket_file_is_replaced() {
    let s = socket();
    drop(std::os::unix::net::UnixListener::bind(&s).unwrap());
    assert!(std::path::Path::new(&s).exists());
    let mut d = Daemon::spawn_raw(&["--socket", &s, "--uplink", "loopback"]);
    d.socket = s.clone().into();
    let _conn = d.connect(TIMEOUT);
    d.assert_running("after replacing a stale socket file");
}

/// Issue 10, case 7: a stats file in a missing directory fails at start-up.
#[test]
fn stats_file_in_a_missing_directory_is_refused_at_start() {
    let s = socket();
    let dir = unique("/tmp/vnmt-no-stats-dir");
    let stats = format!("{dir}/stats.json");
    refused(
        &["--socket", &s, "--uplink", "null", "--stats-file", &stats],
        "--stats-file",
    );
    assert!(!std::path::Path::new(&s).exists(), "socket created anyway");
}

/// Issue 10, case 7: an MTU the AF_XDP frames cannot carry is refused before any
/// interface is touched.
#[test]
fn xdp_with_an_mtu_beyond_a_umem_frame_is_refused() {
    let s = socket();
    refused(
        &["--socket", &s, "--xdp", "vnm-no-such0", "--mtu", "9000"],
        "--mtu",
    );
}

/// Issue 10, case 7: `--help` gives the stats file's real period.
#[test]
fn help_gives_the_stats_period() {
    let out = std::process::Command::new(common::daemon::BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("every 0.5 s"), "{help}");
    assert!(!help.contains("every second"), "{help}");
    assert!(help.contains("--max-guest-memory"), "{help}");
}

/// Issue 12: a socket fd that is not open, or not a socket, is refused by number.
#[test]
fn fd_that_is_not_open_or_not_a_socket_is_refused() {
    refused(
        &["--fd", "97", "--uplink", "null"],
        "file descriptor 97 is not open",
    );
    // stdin is /dev/null.
    refused(
        &["--fd", "0", "--uplink", "null"],
        "file descriptor 0 is not a socket",
    );
}

/// Issue 12: a TAP fd that is not open, or not a tun/tap fd, is refused by number.
#[test]
fn tap_fd_that_is_not_open_or_not_a_tap_is_refused() {
    let s = socket();
    refused(
        &["--socket", &s, "--tap-fd", "97"],
        "--tap-fd: file descriptor 97 is not open",
    );
    refused(
        &["--socket", &s, "--tap-fd", "0"],
        "--tap-fd 0 is not an attached tun/tap fd",
    );
    refused(
        &["--socket", &s, "--tap-fd", "0", "--queues", "2"],
        "one fd per queue pair",
    );
    assert!(!std::path::Path::new(&s).exists(), "socket created anyway");
}

/// Issue 12: socket activation meant for another process is refused.
#[test]
fn listen_pid_that_is_not_ours_is_refused() {
    refused_with_env(
        &["--uplink", "null"],
        &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
        "LISTEN_PID=1 is not this process",
    );
    refused_with_env(
        &["--uplink", "null"],
        &[("LISTEN_FDS", "1")],
        "LISTEN_PID is not",
    );
}

/// Issue 12: no socket at all names every way to give one.
#[test]
fn no_socket_option_and_no_activation_is_refused() {
    refused(
        &["--uplink", "null"],
        "--socket PATH (or --socket-path PATH), --fd N",
    );
}

/// Issue 12: a seccomp mode that is not known is refused, naming the known ones, before
/// anything is created.
#[test]
fn unknown_seccomp_mode_is_refused() {
    let s = socket();
    let args = ["--socket", &s, "--uplink", "null", "--seccomp", "strict"];
    let (code, err) = exited_with_an_error(Daemon::spawn_raw(&args), &args);
    // The command line parser's usage error: exit status 2, the value and the modes named.
    assert_eq!(code, 2, "{args:?}: stderr:\n{err}");
    for want in [
        "error: invalid value 'strict' for '--seccomp <MODE>'",
        "[possible values: kill, log, off]",
    ] {
        assert!(
            err.contains(want),
            "{args:?}: stderr lacks {want:?}:\n{err}"
        );
    }
    assert!(!std::path::Path::new(&s).exists(), "socket created anyway");
}

/// Issue 12: an unknown user or group is refused before anything is created.
#[test]
fn unknown_user_or_group_is_refused() {
    let s = socket();
    refused(
        &[
            "--socket",
            &s,
            "--uplink",
            "null",
            "--user",
            "vnm-no-such-user",
        ],
        "unknown --user \"vnm-no-such-user\"",
    );
    refused(
        &[
            "--socket",
            &s,
            "--uplink",
            "null",
            "--user",
            "nobody",
            "--group",
            "vnm-no-such-group",
        ],
        "unknown --group",
    );
    refused(
        &["--socket", &s, "--uplink", "null", "--group", "nogroup"],
        "--group needs --user",
    );
    assert!(!std::path::Path::new(&s).exists(), "socket created anyway");
}

/// Issue 12: QEMU's conventions: `--print-capabilities` prints the backend type as
/// JSON and exits 0 whatever else the command line holds.
#[test]
fn print_capabilities_prints_the_net_type_and_ignores_other_options() {
    for args in [
        &["--print-capabilities"][..],
        &["--bogus-option", "--print-capabilities", "--queues", "0"][..],
    ] {
        let out = std::process::Command::new(common::daemon::BIN)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {:?}", out.stdout));
        assert_eq!(v, serde_json::json!({"type": "net"}), "{args:?}");
    }
}

/// Issue 12: `--socket-path` (QEMU's name) is `--socket`.
#[test]
fn socket_path_is_an_alias_of_socket() {
    let s = socket();
    let mut d = Daemon::spawn_raw(&["--socket-path", &s, "--uplink", "loopback"]);
    d.socket = s.into();
    let _conn = d.connect(TIMEOUT);
    d.assert_running("on --socket-path");
}

/// Issue 12: `--help` names the deployment options.
#[test]
fn help_names_the_deployment_options() {
    let out = std::process::Command::new(common::daemon::BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--socket-path",
        "--fd <FDNUM>",
        "--tap-fd <FD>",
        "--user <USER>",
        "--group <GROUP>",
        "--print-capabilities",
        "LISTEN_FDS",
    ] {
        assert!(help.contains(opt), "--help does not name {opt}:\n{help}");
    }
}

/// Issue 13: `--config FILE` is written to a temp file removed on drop.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(text: &str) -> Self {
        let path = std::path::PathBuf::from(format!("{}.toml", unique("/tmp/vnm-config")));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Issue 13: a config file's errors name the file, the line and the key, and a check
/// made after parsing (a multicast MAC) is traced back to the file's line.
#[test]
fn config_file_errors_name_the_file_line_and_key() {
    let sock = socket();
    let cases = [
        (
            format!("socket = \"{sock}\"\nuplink = \"null\"\nqeueus = 2\n"),
            "line 3, key `qeueus`",
        ),
        (
            format!("socket = \"{sock}\"\nuplink = \"null\"\n\nqueues = \"two\"\n"),
            "line 4, key `queues`",
        ),
        (
            format!("socket = \"{sock}\"\nuplink = \"null\"\nmac = \"01:00:00:00:00:01\"\n"),
            "line 3, key `mac`",
        ),
        ("socket = \n".to_string(), "line 1"),
        ("once = 1\n".to_string(), "key `once`"),
    ];
    for (text, mention) in cases {
        let f = ConfigFile::new(&text);
        let arg = f.arg();
        refused(&["--config", &arg], mention);
        refused(&["--config", &arg], &arg);
    }
    refused(
        &["--config", "/nonexistent/vnm.toml"],
        "/nonexistent/vnm.toml",
    );
}

/// Issue 13: a daemon runs from a config file, and the command line overrides it.
#[test]
fn a_daemon_runs_from_its_config_file_and_the_command_line_overrides_it() {
    let sock = socket();
    let f = ConfigFile::new(&format!(
        "# vhost-netmem test configuration\nsocket = \"{sock}\"\nuplink = \"null\"\nqueues = 4\nmtu = 9000\n"
    ));
    let arg = f.arg();
    let mut d = Daemon::spawn_raw(&["--config", &arg, "--queues", "2"]);
    d.socket = sock.clone().into();
    let log = d.wait_stderr("queue pair(s)", TIMEOUT);
    assert!(
        log.contains("2 queue pair(s)"),
        "the command line's --queues wins:\n{log}"
    );
    assert!(log.contains(&sock), "the file's socket is used:\n{log}");
    d.wait_socket_file(TIMEOUT);
    d.assert_running("serving from a config file");
}

/// Issue 13: a rate limit that is negative, empty, out of range or not a limit at all
/// is refused, naming its option.
#[test]
fn bad_rate_limits_are_refused_by_option() {
    for (option, value) in [
        ("--tx-rate-limit", "ops=-1/100"),
        ("--tx-rate-limit", "bandwidth=0/100"),
        ("--rx-rate-limit", "bandwidth=1000/3600001"),
        ("--rx-rate-limit", "ops=100/0"),
        ("--rx-rate-limit", "speed=1/1"),
        ("--tx-rate-limit", "bandwidth=100"),
        ("--tx-rate-limit", ""),
        ("--tx-rate-limit", "ops=99999999999999999999999/100"),
    ] {
        let s = socket();
        refused(&["--socket", &s, "--uplink", "null", option, value], option);
    }
}

/// The `--tx-rate-limit` / `--rx-rate-limit` options of the README's rate limits
/// example.
fn readme_rate_limit_args() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("### Rate limits")
        .nth(1)
        .expect("README has a Rate limits section");
    let block = section
        .split("```")
        .nth(1)
        .expect("a command in the Rate limits section");
    let words: Vec<&str> = block.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"vhost-netmem"), "{block}");
    let mut args = Vec::new();
    for w in words.windows(2) {
        if w[0].ends_with("-rate-limit") {
            args.extend([w[0].to_string(), w[1].to_string()]);
        }
    }
    assert_eq!(args.len(), 4, "both options in the example: {block}");
    args
}

#[test]
fn the_readme_rate_limit_example_runs_and_help_shows_it() {
    let args = readme_rate_limit_args();
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = Rig::loopback(GuestConfig::default(), &extra);
    r.g.loopback_roundtrip(0, &guest_frames(700, 8, 60, 1514));
    let s =
        r.d.wait_stats("8 packets each way", common::STATS_TIMEOUT, |s| {
            s.queue(0, "tx_packets") == 8 && s.queue(0, "rx_packets") == 8
        });
    assert_eq!(s.queue(0, "tx_throttled"), 0, "{s}");
    let out = std::process::Command::new(common::daemon::BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains(&format!("{} {}", args[0], args[1])), "{help}");
}
