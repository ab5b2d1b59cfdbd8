// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Deployment as an orchestrator does it (issue 12): the vhost-user socket and the TAP
//! handed down as fds to a daemon with no privilege at all, a connected socket served
//! once, systemd socket activation (the variables set by hand and by
//! `systemd-socket-activate`), `--user` dropping root after the TAP is set up, the
//! systemd units checked with `systemd-analyze verify`, and `ci/install.sh` on a clean
//! prefix. The TAP tests run in namespaces they create and delete; they need root and
//! say why they skip without it.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::{Daemon, BIN};
use common::guest::{Guest, GuestConfig};
use common::launch::{
    assert_unprivileged, daemon_args, daemon_command, open_tap, pass_fds, proc_status,
    PassedTapRig, UNPRIVILEGED,
};
use common::netns::NetNs;
use common::packet::guest_frames;
use common::{privileged, unique, STATS_TIMEOUT, TIMEOUT};

const TAP: &str = "vnmfd0";

/// Frames from the peer towards the guest, 97 bytes longer each from 60.
fn peer_frames(seed: u32, n: usize) -> Vec<Vec<u8>> {
    common::packet::peer_frames(seed, n, 60, 60 + 97 * n.saturating_sub(1))
}

fn socket_path() -> PathBuf {
    PathBuf::from(format!("{}.sock", unique("/tmp/vnmt-deploy")))
}

/// A namespace with TAP [`TAP`] created for `nobody` (`multi_queue` for several
/// pairs), and `pairs` queue fds opened here.
fn passed_tap(pairs: usize) -> (NetNs, Vec<std::os::fd::OwnedFd>) {
    let ns = NetNs::new();
    let mut add = vec!["tuntap", "add", "dev", TAP, "mode", "tap", "user", "65534"];
    if pairs > 1 {
        add.push("multi_queue");
    }
    ns.ip(&add);
    let fds = (0..pairs)
        .map(|_| open_tap(&ns, TAP, pairs > 1, false))
        .collect();
    (ns, fds)
}

/// The daemon as `nobody` with no capabilities, given a listening socket as fd 3 and
/// the TAP's queues as fds 4.., inside `ns`; `extra` options appended.
fn unprivileged_on_passed_fds(
    ns: &NetNs,
    cfg: &GuestConfig,
    taps: &[std::os::fd::OwnedFd],
    extra: &[&str],
) -> (Daemon, PathBuf) {
    let path = socket_path();
    let listener = UnixListener::bind(&path).unwrap();
    let (mut args, stats) = daemon_args(cfg);
    args.extend(["--fd".to_string(), "3".to_string()]);
    let mut fds = vec![(listener.as_raw_fd(), 3)];
    for (i, t) in taps.iter().enumerate() {
        let n = 4 + i32::try_from(i).unwrap();
        args.extend(["--tap-fd".to_string(), n.to_string()]);
        fds.push((t.as_raw_fd(), n));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = daemon_command(ns, UNPRIVILEGED);
    cmd.args(&args);
    pass_fds(&mut cmd, &fds);
    let d = Daemon::start(cmd, path.clone(), stats);
    // The child holds its own copies now.
    drop(listener);
    (d, path)
}

#[test]
fn an_unprivileged_daemon_on_a_passed_socket_and_tap_carries_traffic_both_ways() {
    if !privileged("an_unprivileged_daemon_on_a_passed_socket_and_tap_carries_traffic_both_ways") {
        return;
    }
    let cfg = GuestConfig::default();
    let (ns, taps) = passed_tap(1);
    let (d, _) = unprivileged_on_passed_fds(&ns, &cfg, &taps, &[]);
    drop(taps);
    let mut r = PassedTapRig::attach(ns, TAP, d, cfg);
    r.d.wait_stderr("passed as fd(s) [4]", TIMEOUT);
    assert_unprivileged(&r.d);
    let st = proc_status(r.d.pid());
    assert_eq!(
        st.get("CapBnd").map(String::as_str),
        Some("0000000000000000")
    );
    r.both_ways(0, &guest_frames(300, 8, 60, 1514), &peer_frames(400, 8));
    let s = r.d.wait_stats("8 packets each way", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 8 && s.queue(0, "rx_packets") == 8
    });
    assert_eq!(s.queue(0, "tx_drop_uplink"), 0, "{s}");
    // The offloads follow the guest's features on the passed fd, unprivileged.
    r.d.wait_stderr(&format!("tap {TAP}: offloads"), TIMEOUT);
}

#[test]
fn an_unprivileged_daemon_serves_every_queue_of_a_passed_multi_queue_tap() {
    if !privileged("an_unprivileged_daemon_serves_every_queue_of_a_passed_multi_queue_tap") {
        return;
    }
    let cfg = GuestConfig {
        pairs: 2,
        ..GuestConfig::default()
    };
    let (ns, taps) = passed_tap(2);
    let (d, _) = unprivileged_on_passed_fds(&ns, &cfg, &taps, &[]);
    drop(taps);
    let mut r = PassedTapRig::attach(ns, TAP, d, cfg);
    assert_unprivileged(&r.d);
    for pair in 0..2 {
        let frames = guest_frames(500 + 10 * u32::try_from(pair).unwrap(), 4, 60, 1514);
        r.g.send(pair, &frames);
        r.g.wait_tx(pair, frames.len());
        for (i, f) in frames.iter().enumerate() {
            let got = r.cap.recv(TIMEOUT).unwrap_or_else(|| {
                r.d.fail(&format!(
                    "pair {pair}: guest frame {i} never reached the tap"
                ))
            });
            common::packet::assert_bytes(&got, f, &format!("pair {pair} frame {i}"));
        }
    }
}

/// A passed TAP that is deleted says why it may not come back; re-created for root
/// only it is refused clearly, re-created for the daemon's user it is attached again.
#[test]
fn a_deleted_passed_tap_says_whether_it_can_be_reopened() {
    if !privileged("a_deleted_passed_tap_says_whether_it_can_be_reopened") {
        return;
    }
    let cfg = GuestConfig::default();
    let (ns, taps) = passed_tap(1);
    let (d, _) = unprivileged_on_passed_fds(&ns, &cfg, &taps, &[]);
    drop(taps);
    let mut r = PassedTapRig::attach(ns, TAP, d, cfg);
    r.both_ways(0, &guest_frames(600, 2, 60, 200), &peer_frames(700, 2));
    r.ns.ip(&["link", "del", TAP]);
    r.d.wait_stderr("it was passed as file descriptors", TIMEOUT);
    // Owned by root: nobody may not attach (a tap with no owner, anyone may).
    r.ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap", "user", "0"]);
    r.d.wait_stderr("cannot open it again by name", TIMEOUT);
    r.ns.ip(&["link", "del", TAP]);
    // Owned by nobody: attached again within a second, traffic resumes.
    r.ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap", "user", "65534"]);
    r.d.wait_stats("the tap reopened", STATS_TIMEOUT, |s| {
        s.queue(0, "uplink_reopened") == 1
    });
    r.ns.link_up(TAP);
    r.cap = r.ns.packet_socket(TAP, common::packet::ETH_P_TEST, false);
    r.inj = r.ns.packet_socket(TAP, 0, false);
    r.both_ways(0, &guest_frames(800, 2, 60, 200), &peer_frames(900, 2));
    r.d.assert_running("after the tap came back");
}

#[test]
fn a_tap_fd_opened_without_a_vnet_header_is_refused() {
    if !privileged("a_tap_fd_opened_without_a_vnet_header_is_refused") {
        return;
    }
    let ns = NetNs::new();
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    let tap = open_tap(&ns, TAP, false, true);
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--socket",
        &socket_path().display().to_string(),
        "--tap-fd",
        "5",
    ])
    .env_remove("RUST_LOG");
    pass_fds(&mut cmd, &[(tap.as_raw_fd(), 5)]);
    let mut d = Daemon::start(cmd, PathBuf::new(), PathBuf::new());
    let st = d.wait_exit(TIMEOUT).expect("daemon still running");
    let err = d.stderr();
    assert!(!st.success(), "{err}");
    assert!(
        err.contains("--tap-fd 5 (vnmfd0)") && err.contains("IFF_VNET_HDR"),
        "{err}"
    );
}

/// A socket already connected to the frontend (one end of a socketpair) is served,
/// then the daemon exits: there is nothing to accept.
#[test]
fn a_connected_socket_passed_as_fd_is_served_once() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let cfg = GuestConfig::default();
    let (mut args, stats) = daemon_args(&cfg);
    args.extend(["--fd", "3", "--uplink", "loopback"].map(String::from));
    let mut cmd = Command::new(BIN);
    cmd.args(&args).env("RUST_LOG", "info");
    pass_fds(&mut cmd, &[(theirs.as_raw_fd(), 3)]);
    let mut d = Daemon::start(cmd, PathBuf::new(), stats);
    drop(theirs);
    let mut g = Guest::new(cfg);
    g.follow(&d);
    let c = g.attach_stream(ours);
    g.loopback_roundtrip(0, &guest_frames(1, 4, 60, 1514));
    d.wait_stderr("(connected)", TIMEOUT);
    drop(c);
    let st = d
        .wait_exit(TIMEOUT)
        .unwrap_or_else(|| d.fail("still running after its passed connection ended"));
    assert!(st.success(), "exit {st}{}", d.log().context());
}

/// Socket activation by hand: `LISTEN_PID` is the daemon's own pid (`sh` execs it),
/// the listening socket is fd 3 and no socket option is given.
#[test]
fn listen_fds_without_a_socket_option_serve_the_passed_socket() {
    let path = socket_path();
    let listener = UnixListener::bind(&path).unwrap();
    let cfg = GuestConfig::default();
    let (args, stats) = daemon_args(&cfg);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=vhost-user exec "$0" "$@""#)
        .arg(BIN)
        .args(&args)
        .args(["--uplink", "loopback"])
        .env("RUST_LOG", "info");
    pass_fds(&mut cmd, &[(listener.as_raw_fd(), 3)]);
    let d = Daemon::start(cmd, path.clone(), stats);
    drop(listener);
    let mut r = common::rig::Rig::attach(d, cfg);
    r.g.loopback_roundtrip(0, &guest_frames(2, 4, 60, 1514));
    r.d.wait_stderr("socket-activated fd 3 (vhost-user)", TIMEOUT);
    // A second frontend after the first: the passed socket keeps listening.
    r.reconnect();
    r.g.loopback_roundtrip(0, &guest_frames(3, 2, 60, 600));
}

/// `systemd-socket-activate` (what the socket unit does) in front of the daemon on a
/// TAP, as root dropping to `nobody` with `--user`: a guest connects and packets move
/// both ways.
#[test]
fn systemd_socket_activate_starts_a_daemon_that_serves_a_guest_on_a_tap() {
    if !privileged("systemd_socket_activate_starts_a_daemon_that_serves_a_guest_on_a_tap") {
        return;
    }
    let ns = NetNs::new();
    let path = socket_path();
    let cfg = GuestConfig::default();
    let (args, stats) = daemon_args(&cfg);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name(), "systemd-socket-activate", "-l"])
        .arg(&path)
        .args(["--fdname=vhost-user", "-E", "RUST_LOG=info", BIN])
        .args(&args)
        .args(["--tap", TAP, "--user", "nobody"]);
    // systemd-socket-activate listens, and starts the daemon on the first connection.
    let d = Daemon::start(cmd, path.clone(), stats);
    let mut r = PassedTapRig::attach(ns, TAP, d, cfg);
    r.d.wait_stderr("socket-activated fd 3 (vhost-user)", TIMEOUT);
    assert_unprivileged(&r.d);
    r.both_ways(0, &guest_frames(1000, 8, 60, 1514), &peer_frames(1100, 8));
}

/// `--user nobody` on a TAP the daemon creates as root: once the TAP is up the daemon
/// is `nobody` with no capability left, binds its socket as `nobody`, and carries
/// traffic; the offloads still follow the guest.
#[test]
fn user_drops_root_after_the_tap_is_created() {
    if !privileged("user_drops_root_after_the_tap_is_created") {
        return;
    }
    let ns = NetNs::new();
    let cfg = GuestConfig::default();
    let d = common::rig::Rig::spawn_daemon(
        &cfg,
        &["--tap", TAP],
        &["--user", "nobody", "--group", "nogroup"],
        Some(&ns),
    );
    let mut r = PassedTapRig::attach(ns, TAP, d, cfg);
    assert_unprivileged(&r.d);
    let st = proc_status(r.d.pid());
    assert_eq!(
        st.get("CapBnd").map(String::as_str),
        Some("0000000000000000")
    );
    assert_eq!(st.get("NoNewPrivs").map(String::as_str), Some("1"));
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&r.d.socket).unwrap().uid();
    assert_eq!(owner, 65534, "the socket was not bound as --user");
    r.both_ways(0, &guest_frames(1200, 8, 60, 1514), &peer_frames(1300, 8));
    r.d.wait_stderr("running as nobody:nogroup (65534:65534)", TIMEOUT);
}

fn install(prefix: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ci/install.sh"))
        .arg("--prefix")
        .arg(prefix)
        .args(["--binary", BIN])
        .output()
        .expect("run ci/install.sh")
}

/// `ci/install.sh` on a clean prefix: the binary, the units and vhost-user.json where
/// a distribution puts them, the binary path filled in; `systemd-analyze verify`
/// accepts the installed units.
#[test]
fn install_puts_binary_units_and_vhost_user_json_in_place() {
    let prefix = PathBuf::from(unique("/tmp/vnmt-prefix"));
    let out = install(&prefix);
    assert!(
        out.status.success(),
        "ci/install.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = prefix.join("bin/vhost-netmem");
    let units = prefix.join("lib/systemd/system");
    let json = prefix.join("share/qemu/vhost-user/50-vhost-netmem.json");
    for f in [
        &bin,
        &units.join("vhost-netmem@.service"),
        &units.join("vhost-netmem@.socket"),
        &json,
    ] {
        assert!(f.exists(), "{} not installed", f.display());
    }
    let caps = Command::new(&bin)
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(caps.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["type"], "net");
    assert_eq!(doc["binary"], bin.display().to_string());
    let service = std::fs::read_to_string(units.join("vhost-netmem@.service")).unwrap();
    assert!(
        service.contains(&format!("ExecStart={} ", bin.display())),
        "{service}"
    );
    assert!(!service.contains("@BINDIR@"), "{service}");
    verify_units(&units);
    let _ = std::fs::remove_dir_all(&prefix);
}

/// `systemd-analyze verify` on an instance of each template (a symlink named for
/// instance `vm1`, as systemd loads one).
fn verify_units(units: &Path) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var_os("VNM_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
            panic!("systemd-analyze is missing (Debian package systemd)");
        }
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let dir = PathBuf::from(unique("/tmp/vnmt-units"));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in ["service", "socket"] {
        let template = units.join(format!("vhost-netmem@.{kind}"));
        std::fs::copy(&template, dir.join(format!("vhost-netmem@.{kind}"))).unwrap();
        std::os::unix::fs::symlink(
            format!("vhost-netmem@.{kind}"),
            dir.join(format!("vhost-netmem@vm1.{kind}")),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("vhost-netmem@vm1.socket"))
        .arg(dir.join("vhost-netmem@vm1.service"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Anything it says about our units is a finding (lines about the host's own units
    // are not ours to fix).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("vhost-netmem"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{text}");
}

/// An AF_XDP daemon with `--user nobody` (and `extra`), on a fresh veth pair
/// (`queues` queues each way); it kept CAP_NET_RAW and CAP_IPC_LOCK and nothing else.
fn xdp_as_nobody(test: &str, queues: Option<u32>, extra: &[&str]) -> Option<common::rig::Rig> {
    let mut args = vec!["--user", "nobody"];
    args.extend_from_slice(extra);
    let r = common::rig::Rig::on_veth(
        test,
        GuestConfig::default(),
        ("vnmxu0", "vnmxu1"),
        queues,
        &args,
    )?;
    let st = proc_status(r.d.pid());
    let want = format!("{:016x}", (1u64 << 13) | (1u64 << 14));
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        if st.get(key) != Some(&want) {
            r.d.fail(&format!("{key} is {:?}, want {want}", st.get(key)));
        }
    }
    if !st
        .get("Uid")
        .is_some_and(|u| u.starts_with("65534\t65534\t65534"))
    {
        r.d.fail(&format!("Uid is {:?}", st.get("Uid")));
    }
    Some(r)
}

/// `--user nobody` on AF_XDP: traffic both ways, before and after a reconnect.
#[test]
fn user_on_xdp_carries_traffic_both_ways() {
    let Some(mut r) = xdp_as_nobody("user_on_xdp_carries_traffic_both_ways", None, &[]) else {
        return;
    };
    for round in 0..2u32 {
        r.send_to_peer(0, &guest_frames(1400 + 100 * round, 8, 60, 1514));
        r.g.post_rx(0, 16, 2048);
        let back = peer_frames(1450 + 100 * round, 8);
        r.inject(&back, common::packet::ETH_P_TEST);
        let got = r.g.recv(0, back.len(), TIMEOUT);
        for (i, (p, f)) in got.iter().zip(&back).enumerate() {
            common::packet::assert_bytes(&p.frame, f, &format!("round {round} frame {i}"));
        }
        r.reconnect();
    }
}

/// `--user nobody` with `--xdp-zerocopy-tx`: every connection's memory table gets a
/// new zero-copy TX socket and a pinned UMEM, which is what CAP_NET_RAW and
/// CAP_IPC_LOCK are kept for; guest frames go out before and after a reconnect.
#[test]
fn user_on_xdp_zerocopy_tx_registers_each_new_memory_table() {
    let Some(mut r) = xdp_as_nobody(
        "user_on_xdp_zerocopy_tx_registers_each_new_memory_table",
        // The zero-copy TX socket takes the interface's second queue.
        Some(2),
        &["--xdp-zerocopy-tx"],
    ) else {
        return;
    };
    for round in 0..2u32 {
        r.send_to_peer(0, &guest_frames(1600 + 100 * round, 8, 60, 1514));
        r.reconnect();
    }
    let log = r.d.stderr();
    assert_eq!(
        log.matches("registered for zero-copy tx").count(),
        3,
        "one registration per connection:\n{log}"
    );
    let s = r.d.wait_stats("16 TX packets", STATS_TIMEOUT, |s| {
        s.queue(0, "tx_packets") == 16
    });
    assert_eq!(s.total("tx_drop_uplink"), 0, "{s}");
}

/// The service unit's `CapabilityBoundingSet=` is enough for what its `ExecStart`
/// does: the daemon, started as root bounded to exactly that set (by `setpriv`, as
/// systemd would), creates its TAP, drops to `--user`, and carries traffic.
#[test]
fn the_service_capability_bounding_set_suffices_for_a_tap_and_the_drop() {
    if !privileged("the_service_capability_bounding_set_suffices_for_a_tap_and_the_drop") {
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/vhost-netmem@.service"
    ))
    .unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the service sets CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("--bounding-set=-all,{}", caps.join(","));
    let ns = NetNs::new();
    let cfg = GuestConfig::default();
    let path = socket_path();
    let (args, stats) = daemon_args(&cfg);
    let mut cmd = daemon_command(&ns, &["setpriv", &bounding, "--inh-caps=-all"]);
    cmd.args(&args)
        .arg("--socket")
        .arg(&path)
        .args(["--tap", TAP, "--user", "nobody"]);
    let d = Daemon::start(cmd, path, stats);
    let mut r = PassedTapRig::attach(ns, TAP, d, cfg);
    assert_unprivileged(&r.d);
    r.both_ways(0, &guest_frames(1700, 4, 60, 1514), &peer_frames(1800, 4));
}
