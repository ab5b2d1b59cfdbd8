// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Rigs: the real daemon and a guest connected to it, on the loopback uplink, or on a
//! TAP or an AF_XDP veth inside a fresh network namespace with AF_PACKET sockets on the
//! peer's end of the link.

use std::time::Duration;

use super::connection::Connection;
use super::daemon::Daemon;
use super::guest::{Guest, GuestConfig};
use super::netns::{NetNs, PacketSocket};
use super::packet::{assert_bytes, ETH_P_TEST, GUEST_MAC, GUEST_MAC_STR};
use super::{privileged, TIMEOUT};

/// The peer's end of the daemon's link inside the namespace (the TAP itself, or the
/// veth end facing the XDP one), with AF_PACKET sockets opened on it at start.
pub struct Peer {
    /// The interface.
    pub ifname: String,
    /// Captures EtherType 0x88b5 frames arriving there from the daemon.
    pub cap: PacketSocket,
    /// Sends frames from there towards the daemon (and the guest).
    pub inj: PacketSocket,
}

impl Peer {
    fn open(ns: &NetNs, ifname: &str) -> Peer {
        Peer {
            ifname: ifname.to_string(),
            cap: ns.packet_socket(ifname, ETH_P_TEST, false),
            inj: ns.packet_socket(ifname, 0, false),
        }
    }
}

/// A daemon and a guest connected to it. Fields drop in this order: connection, guest,
/// daemon (killed), the peer's sockets, then the namespace (deleted).
pub struct Rig {
    c: Option<Connection>,
    /// The guest.
    pub g: Guest,
    /// The daemon.
    pub d: Daemon,
    peer: Option<Peer>,
    ns: Option<NetNs>,
}

impl Rig {
    /// The daemon for a guest of `cfg`: the `uplink` options, `--queues` and
    /// `--queue-size` from `cfg`, the guest's `--mac`, then `extra`; inside `ns` when
    /// given. Not connected yet.
    pub fn spawn_daemon(
        cfg: &GuestConfig,
        uplink: &[&str],
        extra: &[&str],
        ns: Option<&NetNs>,
    ) -> Daemon {
        let pairs = cfg.pairs.to_string();
        let size = cfg.queue_size.to_string();
        let mut args = uplink.to_vec();
        args.extend_from_slice(&["--queues", &pairs, "--queue-size", &size]);
        args.extend_from_slice(&["--mac", GUEST_MAC_STR]);
        args.extend_from_slice(extra);
        Daemon::spawn(&args, ns)
    }

    /// A guest of `cfg` connected to the running daemon `d`.
    pub fn attach(mut d: Daemon, cfg: GuestConfig) -> Rig {
        let mut g = Guest::new(cfg);
        let c = g.attach(&mut d);
        Rig {
            c: Some(c),
            g,
            d,
            peer: None,
            ns: None,
        }
    }

    /// A daemon with the loopback uplink (TX reflected to RX on the same pair) started
    /// with `extra` options, and a guest of `cfg` connected to it.
    pub fn loopback(cfg: GuestConfig, extra: &[&str]) -> Rig {
        let d = Self::spawn_daemon(&cfg, &["--uplink", "loopback"], extra, None);
        Self::attach(d, cfg)
    }

    /// A daemon on TAP `tap` inside a fresh namespace (link up), a guest of `cfg`
    /// connected to it and the peer's sockets on the TAP; `None` when the test cannot run
    /// here (not root).
    pub fn on_tap(test: &str, cfg: GuestConfig, tap: &str) -> Option<Rig> {
        Self::on_tap_with(test, cfg, tap, &[])
    }

    /// As [`on_tap`](Self::on_tap), the daemon started with `extra` options too.
    pub fn on_tap_with(test: &str, cfg: GuestConfig, tap: &str, extra: &[&str]) -> Option<Rig> {
        if !privileged(test) {
            return None;
        }
        let ns = NetNs::new();
        let d = Self::spawn_daemon(&cfg, &["--tap", tap], extra, Some(&ns));
        let mut r = Self::attach(d, cfg);
        ns.wait_link(tap, &mut r.d, TIMEOUT);
        ns.link_up(tap);
        r.peer = Some(Peer::open(&ns, tap));
        r.ns = Some(ns);
        Some(r)
    }

    /// A veth pair `xdp_end`–`peer_end` in a fresh namespace (`queues` queues each way
    /// when given), a daemon with the AF_XDP uplink on `xdp_end` started with `extra`
    /// options, a guest of `cfg` connected to it and the peer's sockets on `peer_end`;
    /// `None` when the test cannot run here (not root).
    pub fn on_veth(
        test: &str,
        cfg: GuestConfig,
        (xdp_end, peer_end): (&str, &str),
        queues: Option<u32>,
        extra: &[&str],
    ) -> Option<Rig> {
        if !privileged(test) {
            return None;
        }
        let ns = NetNs::new();
        ns.veth(xdp_end, peer_end, queues);
        let d = Self::spawn_daemon(&cfg, &["--xdp", xdp_end], extra, Some(&ns));
        let mut r = Self::attach(d, cfg);
        r.peer = Some(Peer::open(&ns, peer_end));
        r.ns = Some(ns);
        Some(r)
    }

    /// The rig's network namespace.
    pub fn ns(&self) -> &NetNs {
        self.ns.as_ref().expect("a loopback rig has no namespace")
    }

    /// The peer's end of the link.
    pub fn peer(&self) -> &Peer {
        self.peer.as_ref().expect("a loopback rig has no peer")
    }

    /// The guest's vhost-user connection.
    pub fn conn(&mut self) -> &mut Connection {
        self.c.as_mut().expect("the guest is disconnected")
    }

    /// Close the guest's connection (the frontend goes away; guest memory stays).
    pub fn disconnect(&mut self) {
        self.c = None;
    }

    /// Connect the guest again (closing its connection first, if any) and replay the
    /// whole setup.
    pub fn connect(&mut self) {
        self.c = None;
        self.c = Some(self.g.attach(&mut self.d));
    }

    /// Disconnect, check that the daemon (without `--once`) keeps running, and connect
    /// again.
    pub fn reconnect(&mut self) {
        self.disconnect();
        std::thread::sleep(Duration::from_millis(100));
        self.d
            .assert_running("after the frontend disconnected (no --once)");
        self.connect();
    }

    /// Expect `frames` at the peer's end, in order, byte for byte (`what`: what they are,
    /// for the failure message).
    pub fn expect_at_peer(&self, frames: &[Vec<u8>], what: &str) {
        let peer = self.peer();
        for (i, f) in frames.iter().enumerate() {
            let Some(got) = peer.cap.recv(TIMEOUT) else {
                self.d.fail(&format!(
                    "{what} {i} of {} never reached {} in {}",
                    frames.len(),
                    peer.ifname,
                    self.ns().name()
                ));
            };
            assert_bytes(&got, f, &format!("{what} {i} on {}", peer.ifname));
        }
    }

    /// Send `frames` on `pair`, wait for their chains to come back, and expect the frames
    /// at the peer's end, in order, byte for byte.
    pub fn send_to_peer(&mut self, pair: usize, frames: &[Vec<u8>]) {
        self.g.send(pair, frames);
        self.g.wait_tx(pair, frames.len());
        self.expect_at_peer(frames, "guest frame");
    }

    /// Send `frames` from the peer's end towards the guest, as `ethertype`.
    pub fn inject(&self, frames: &[Vec<u8>], ethertype: u16) {
        for f in frames {
            self.peer().inj.send(f, ethertype, GUEST_MAC);
        }
    }
}
