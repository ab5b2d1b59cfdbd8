// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A minimal HTTP/1.1 client for the daemon's API socket and metrics address (and a
//! Prometheus server's query API): raw bytes in, status, headers and body out. Every
//! read and write has a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Deadline of one exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// The head (status line and headers), as text.
    pub head: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply body is not JSON ({e}): {}", self.text()))
    }

    /// The `error` message of a JSON error reply.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" in {}", self.text()))
            .to_string()
    }

    /// Header `name`'s value (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Reply {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

fn exchange(mut s: impl Read + Write, raw: &[u8]) -> Reply {
    s.write_all(raw).expect("send the request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the reply");
    parse(&out)
}

/// A request's bytes: `method path` with `body` (Content-Length set).
pub fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Send `raw` on the unix socket `path`; the reply.
pub fn unix_raw(path: &Path, raw: &[u8]) -> Reply {
    let s =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    exchange(s, raw)
}

/// `method path` with `body` on the unix socket `path`.
pub fn unix(path: &Path, method: &str, route: &str, body: &str) -> Reply {
    unix_raw(path, &request_bytes(method, route, body.as_bytes()))
}

/// `GET route` on the TCP address `addr`.
pub fn tcp_get(addr: SocketAddr, route: &str) -> Reply {
    let s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    exchange(s, &request_bytes("GET", route, b""))
}

/// A loopback TCP port free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The value of the sample `line_start` (a metric name with its labels, e.g.
/// `vhost_netmem_tx_packets_total{queue="0"}`) in a text exposition.
pub fn sample(exposition: &str, line_start: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(line_start)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A socket path the daemon creates, removed when this is dropped (the daemon is
/// killed by SIGKILL and cannot remove it).
pub struct SocketFile(pub std::path::PathBuf);

impl SocketFile {
    /// A fresh path under /tmp ending in `suffix`.
    pub fn new(suffix: &str) -> SocketFile {
        SocketFile(format!("{}{suffix}", super::unique("/tmp/vnmt")).into())
    }

    /// The path as text (for the command line).
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
