// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Starting the daemon the way an orchestrator does: fds handed down at chosen numbers
//! (close-on-exec cleared in the child only), a TAP opened here in the test's
//! namespace, an unprivileged identity (`setpriv`), and a guest on the TAP with the
//! peer's AF_PACKET sockets ([`PassedTapRig`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use super::connection::Connection;
use super::daemon::{Daemon, BIN};
use super::guest::{Guest, GuestConfig};
use super::netns::{NetNs, PacketSocket};
use super::packet::{assert_bytes, ETH_P_TEST, GUEST_MAC, GUEST_MAC_STR};
use super::{unique, TIMEOUT};

/// The unprivileged uid and gid the tests run the daemon as (`nobody` on Debian).
pub const NOBODY: u32 = 65534;

/// `setpriv` arguments that make the rest of the command line run as [`NOBODY`] with
/// no supplementary groups and every capability gone (inheritable, ambient, bounding).
pub const UNPRIVILEGED: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
];

/// Hand `fds` down to the child of `cmd`: each `(fd, number)` becomes fd `number` in
/// the child, without close-on-exec. The parent's fds keep their flags, so no other
/// child of this (multi-threaded) test process inherits them.
pub fn pass_fds(cmd: &mut Command, fds: &[(RawFd, RawFd)]) {
    const MAX: usize = 16;
    assert!(fds.len() <= MAX, "pass_fds hands down at most {MAX} fds");
    let fds = fds.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl and
    // dup2, which are async-signal-safe; it allocates nothing (the Vec was moved in
    // before the fork). Sources are first copied above every target number so that a
    // target cannot overwrite a source not handed down yet.
    unsafe {
        cmd.pre_exec(move || {
            let mut high: [RawFd; MAX] = [0; MAX];
            for (i, (src, _)) in fds.iter().enumerate() {
                let tmp = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 100);
                if tmp < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high[i] = tmp;
            }
            for (i, (_, dst)) in fds.iter().enumerate() {
                // dup2 leaves the new fd without FD_CLOEXEC.
                if libc::dup2(high[i], *dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Open one queue of TAP `name` (which must exist in `ns`) the way QEMU and libvirt do:
/// `/dev/net/tun`, `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (and
/// `IFF_MULTI_QUEUE`); `without_vnet_hdr` leaves out `IFF_VNET_HDR`, which the daemon
/// must refuse.
pub fn open_tap(ns: &NetNs, name: &str, multi_queue: bool, without_vnet_hdr: bool) -> OwnedFd {
    const IFF_TAP: i16 = 0x0002;
    const IFF_NO_PI: i16 = 0x1000;
    const IFF_VNET_HDR: i16 = 0x4000;
    const IFF_MULTI_QUEUE: i16 = 0x0100;
    // _IOW('T', 202, int)
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let mut flags = IFF_TAP | IFF_NO_PI;
    if !without_vnet_hdr {
        flags |= IFF_VNET_HDR;
    }
    if multi_queue {
        flags |= IFF_MULTI_QUEUE;
    }
    let name = name.to_string();
    ns.run_inside(move || {
        // Opened in the namespace: the tun file belongs to it.
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun");
        #[repr(C)]
        struct IfReq {
            name: [u8; 16],
            flags: i16,
            _pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; 16],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one ifreq, a live repr(C) local of the
        // kernel's 40-byte layout; the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        assert_eq!(
            rc,
            0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        OwnedFd::from(file)
    })
}

/// `/proc/PID/status` as key -> value.
pub fn proc_status(pid: u32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Panic unless process `pid` runs as uid and gid [`NOBODY`] (real, effective, saved)
/// with empty effective, permitted and ambient capability sets.
pub fn assert_unprivileged(d: &Daemon) {
    let st = proc_status(d.pid());
    let want = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    for key in ["Uid", "Gid"] {
        if st.get(key) != Some(&want) {
            d.fail(&format!(
                "{key} of the daemon is {:?}, want {want:?}",
                st.get(key)
            ));
        }
    }
    for key in ["CapEff", "CapPrm", "CapAmb"] {
        if st.get(key).map(String::as_str) != Some("0000000000000000") {
            d.fail(&format!(
                "{key} of the daemon is {:?}, want none",
                st.get(key)
            ));
        }
    }
}

/// The daemon's arguments for a guest of `cfg` (queues, ring size, the guest's MAC)
/// and a stats file; returns them and the stats file's path.
pub fn daemon_args(cfg: &GuestConfig) -> (Vec<String>, PathBuf) {
    let stats = PathBuf::from(format!("{}.json", unique("/tmp/vnmt-launch")));
    let args = [
        "--queues",
        &cfg.pairs.to_string(),
        "--queue-size",
        &cfg.queue_size.to_string(),
        "--mac",
        GUEST_MAC_STR,
        "--stats-file",
        &stats.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (args, stats)
}

/// `ip netns exec NS [prefix...] vhost-netmem` (the daemon keeps the pid: neither
/// `ip netns exec` nor `setpriv` forks).
pub fn daemon_command(ns: &NetNs, prefix: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name()]).args(prefix).arg(BIN);
    if std::env::var_os("RUST_LOG").is_none() {
        c.env("RUST_LOG", "info");
    }
    c
}

/// A daemon on a TAP inside a fresh namespace, a guest connected to it, and the peer's
/// sockets on the TAP. Fields drop in this order: connection, guest, daemon, sockets,
/// namespace.
pub struct PassedTapRig {
    /// The guest's connection.
    pub c: Option<Connection>,
    /// The guest.
    pub g: Guest,
    /// The daemon.
    pub d: Daemon,
    /// Captures EtherType 0x88b5 frames arriving on the TAP.
    pub cap: PacketSocket,
    /// Sends frames from the TAP's side towards the guest.
    pub inj: PacketSocket,
    /// The TAP's name.
    pub tap: String,
    /// The namespace.
    pub ns: NetNs,
}

impl PassedTapRig {
    /// Bring the TAP up, open the peer's sockets and connect a guest of `cfg` to `d`.
    pub fn attach(ns: NetNs, tap: &str, mut d: Daemon, cfg: GuestConfig) -> PassedTapRig {
        let mut g = Guest::new(cfg);
        let c = g.attach(&mut d);
        ns.wait_link(tap, &mut d, TIMEOUT);
        ns.link_up(tap);
        PassedTapRig {
            c: Some(c),
            g,
            d,
            cap: ns.packet_socket(tap, ETH_P_TEST, false),
            inj: ns.packet_socket(tap, 0, false),
            tap: tap.to_string(),
            ns,
        }
    }

    /// Guest -> TAP and TAP -> guest on `pair`, `frames` each way, byte for byte.
    pub fn both_ways(&mut self, pair: usize, out: &[Vec<u8>], back: &[Vec<u8>]) {
        self.g.send(pair, out);
        self.g.wait_tx(pair, out.len());
        for (i, f) in out.iter().enumerate() {
            let Some(got) = self.cap.recv(TIMEOUT) else {
                self.d
                    .fail(&format!("guest frame {i} never reached {}", self.tap));
            };
            assert_bytes(&got, f, &format!("guest frame {i} on {}", self.tap));
        }
        self.g.post_rx(pair, back.len() + 8, 2048);
        for f in back {
            self.inj.send(f, ETH_P_TEST, GUEST_MAC);
        }
        let got = self.g.recv(pair, back.len(), TIMEOUT);
        for (i, (p, f)) in got.iter().zip(back).enumerate() {
            assert_bytes(
                &p.frame,
                f,
                &format!("frame {i} from {} in the guest", self.tap),
            );
        }
    }
}
