//! Rigs: a real daemon and a guest connected to it, on the loopback uplink or on a TAP
//! inside a fresh network namespace.

use super::connection::Connection;
use super::daemon::Daemon;
use super::guest::{Guest, GuestConfig};
use super::TIMEOUT;

/// A daemon with the loopback uplink and a guest attached to it (`cfg.pairs` pairs).
pub fn start_loopback(cfg: GuestConfig, extra_args: &[&str]) -> (Daemon, Guest, Connection) {
    let pairs = cfg.pairs.to_string();
    let size = cfg.queue_size.to_string();
    let mut args = vec![
        "--uplink",
        "loopback",
        "--queues",
        &pairs,
        "--queue-size",
        &size,
        "--mac",
        super::packet::GUEST_MAC_STR,
    ];
    args.extend_from_slice(extra_args);
    let mut daemon = Daemon::spawn(&args, None);
    let mut guest = Guest::new(cfg);
    let conn = guest.attach(&mut daemon);
    (daemon, guest, conn)
}

/// A daemon on TAP `tap` inside a fresh namespace (link up) and a guest attached to it
/// (`cfg.pairs` pairs); None when the test cannot run here (not root). Keep the values
/// so that they drop in the order connection, guest, daemon, namespace.
pub fn start_on_tap(
    test: &str,
    cfg: GuestConfig,
    tap: &str,
) -> Option<(super::netns::NetNs, Daemon, Guest, Connection)> {
    if !super::privileged(test) {
        return None;
    }
    let ns = super::netns::NetNs::new();
    let pairs = cfg.pairs.to_string();
    let mut daemon = Daemon::spawn(
        &[
            "--tap",
            tap,
            "--queues",
            &pairs,
            "--mac",
            super::packet::GUEST_MAC_STR,
        ],
        Some(&ns),
    );
    let mut guest = Guest::new(cfg);
    let conn = guest.attach(&mut daemon);
    ns.wait_link(tap, &mut daemon, TIMEOUT);
    ns.link_up(tap);
    Some((ns, daemon, guest, conn))
}
