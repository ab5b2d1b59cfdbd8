// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The effective configuration as JSON (`GET /config`).

use serde_json::{json, Value};

use crate::config::{format_mac, NetConfig, SocketConfig, TestUplinkArg, UplinkConfig};

/// `config` as a JSON object; every field of [`NetConfig`] is shown (the
/// destructuring below has no `..`: a new field must be added here to compile).
pub fn config_json(config: &NetConfig) -> Value {
    let NetConfig {
        socket,
        uplink,
        queue_pairs,
        queue_size,
        mac,
        mtu,
        once,
        stats_file,
        busy_poll,
        tx_holdoff,
        xdp_zerocopy_tx,
        generator_size,
        max_guest_memory,
        user,
        seccomp,
        metrics,
        api_socket,
        rate_limits,
    } = config;
    let socket = match socket {
        SocketConfig::Listen(p) => json!({"listen": p}),
        SocketConfig::Connect(p) => json!({"connect": p}),
        SocketConfig::Fd(fd) => json!({"fd": fd}),
        SocketConfig::Activated(a) => json!({"activated": {"fd": a.fd, "name": a.name}}),
    };
    let uplink = match uplink {
        UplinkConfig::Tap(name) => json!({"tap": name}),
        UplinkConfig::TapFds(fds) => json!({"tap_fds": fds}),
        UplinkConfig::Test(TestUplinkArg::Null) => json!({"test": "null"}),
        UplinkConfig::Test(TestUplinkArg::Loopback) => json!({"test": "loopback"}),
        UplinkConfig::Test(TestUplinkArg::Generator) => json!({"test": "generator"}),
        UplinkConfig::Xdp(iface) => json!({"xdp": iface}),
    };
    let micros = |d: &Option<std::time::Duration>| d.map_or(0, |d| d.as_micros());
    json!({
        "socket": socket,
        "uplink": uplink,
        "queue_pairs": queue_pairs,
        "queue_size": queue_size,
        "mac": format_mac(*mac),
        "mtu": mtu,
        "once": once,
        "stats_file": stats_file,
        "busy_poll_us": micros(busy_poll),
        "tx_holdoff_us": micros(tx_holdoff),
        "xdp_zerocopy_tx": xdp_zerocopy_tx,
        "generator_size": generator_size,
        "max_guest_memory": max_guest_memory,
        "user": user.as_ref().map(|(u, _)| u),
        "group": user.as_ref().and_then(|(_, g)| g.as_ref()),
        "seccomp": seccomp.to_string(),
        "metrics": metrics.as_ref().map(|m| m.to_string()),
        "api_socket": api_socket,
        // At start-up; GET /queues/PAIR/rate-limit gives each pair's current limits.
        "rate_limits": rate_limits,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Cli;

    #[test]
    fn the_configuration_shows_as_given() {
        let cli = Cli::try_parse_from([
            "vnm",
            "--socket",
            "/tmp/s",
            "--uplink",
            "loopback",
            "--queues",
            "2",
            "--mac",
            "52:54:00:12:34:56",
            "--tx-holdoff",
            "50",
            "--metrics",
            "127.0.0.1:9464",
        ])
        .unwrap();
        let v = config_json(&NetConfig::from_cli(cli).unwrap());
        assert_eq!(v["socket"], json!({"listen": "/tmp/s"}));
        assert_eq!(v["uplink"], json!({"test": "loopback"}));
        assert_eq!(v["queue_pairs"], 2);
        assert_eq!(v["mac"], "52:54:00:12:34:56");
        assert_eq!(v["tx_holdoff_us"], 50);
        assert_eq!(v["busy_poll_us"], 0);
        assert_eq!(v["seccomp"], "kill");
        assert_eq!(v["metrics"], "127.0.0.1:9464");
        assert_eq!(v["api_socket"], Value::Null);
    }
}
