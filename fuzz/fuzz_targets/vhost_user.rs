// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! (a) The vhost-user control plane: a stream of messages (header, body, attached
//! memfds and eventfds; see `vnm_fuzz::vhost`) written by a frontend thread into a
//! socketpair and served by the daemon's own connection loop (`serve_connection`,
//! the `vhost` crate's protocol layer and our `NetBackend`), with a loopback uplink,
//! two queue pairs, and the queue pair workers it starts running over the memfds.
//!
//! Checks: no panic, no abort, no crash (a SIGBUS from a region larger than its file
//! is one), no hang; after the connection ends and the backend shuts down (as the
//! daemon does), every uplink queue is back with the uplink, no guest memory is left
//! mapped, and the process has exactly the file descriptors it had before.
#![no_main]

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use vhost_netmem::config::{Cli, NetConfig};
use vhost_netmem::metrics::DeviceMetrics;
use vhost_netmem::ratelimit::RateLimits;
use vhost_netmem::uplink::null::{TestUplink, TestUplinkKind};
use vhost_netmem::uplink::Uplink;
use vhost_netmem::vhost_user::{serve_connection, NetBackend};
use vhost_netmem::virtio::features::SUPPORTED;
use vnm_fuzz::vhost;

const PAIRS: usize = 2;

struct Fixed {
    config: Arc<NetConfig>,
    /// Never readable: the connection is never asked to stop.
    stop: UnixStream,
    _stop_peer: UnixStream,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        // libFuzzer's C++ main does not ignore SIGPIPE as a Rust main does (the daemon
        // runs with it ignored): a reply to a frontend that has gone must not kill us.
        // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let cli = Cli::parse_from([
            "vhost-netmem",
            "--socket",
            "/nonexistent/vnm-fuzz.sock",
            "--uplink",
            "loopback",
            "--queues",
            "2",
        ]);
        let config = Arc::new(NetConfig::from_cli(cli).expect("fuzz configuration"));
        let (stop, peer) = UnixStream::pair().expect("socketpair");
        Fixed {
            config,
            stop,
            _stop_peer: peer,
        }
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fuzz_target!(|data: &[u8]| {
    let fixed = fixed();
    let msgs = vhost::decode(data);
    let fds_before = open_fds();
    {
        let uplink: Arc<dyn Uplink> =
            Arc::new(TestUplink::new(TestUplinkKind::Loopback, PAIRS).expect("loopback uplink"));
        let metrics = Arc::new(DeviceMetrics::new(PAIRS));
        let backend = Arc::new(Mutex::new(NetBackend::new(
            Arc::clone(&fixed.config),
            SUPPORTED & !uplink.unsupported_features(),
            Arc::clone(&uplink),
            Arc::clone(&metrics),
            Arc::new(RateLimits::new(PAIRS, fixed.config.rate_limits)),
        )));
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let frontend = vhost::spawn_frontend(ours, msgs);
        let _end = serve_connection(theirs, Arc::clone(&backend), metrics.control(), &fixed.stop);
        backend.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        frontend.join().expect("frontend thread");
        {
            let b = backend.lock().unwrap_or_else(|e| e.into_inner());
            assert!(
                b.memory().load().regions().is_empty(),
                "guest memory still mapped after shutdown"
            );
        }
        for pair in 0..PAIRS {
            assert!(
                uplink.take_queue(pair).is_ok(),
                "uplink queue {pair} not returned after shutdown"
            );
        }
        assert_eq!(Arc::strong_count(&backend), 1, "backend still referenced");
    }
    assert_eq!(
        open_fds(),
        fds_before,
        "file descriptors leaked by the connection"
    );
});
