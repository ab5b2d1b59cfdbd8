// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A real Prometheus server (Debian's `prometheus` package) started by a test: a temporary
//! configuration that scrapes one target every second, temporary storage, a free
//! loopback port for its web API; killed by PID and its files removed on drop. And
//! `promtool check metrics`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{free_port, tcp_get};
use super::unique;

/// Whether `tool` is installed (on PATH); when it is not, a test skips, or fails with
/// `VNM_REQUIRE_PRIVILEGED=1` (CI, where ci/deps.sh installs it).
pub fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    let reason =
        format!("{test}: needs {tool} (Debian's prometheus package; ci/deps.sh installs it)");
    if std::env::var_os("VNM_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{reason} (VNM_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("SKIPPED {reason}");
    false
}

/// `promtool check metrics` on `exposition`: its exit status success and its output.
pub fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool's result");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A running Prometheus server.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// Its web API.
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Start one that scrapes `target` (HOST:PORT) every second.
    pub fn start(target: SocketAddr) -> Prometheus {
        let dir = PathBuf::from(unique("/tmp/vnm-prom"));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: vhost-netmem\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("log")).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, dir, addr }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Run the instant query `q`: its result vector (`data.result`), or None while the
    /// server is not up.
    pub fn query(&self, q: &str) -> Option<Vec<serde_json::Value>> {
        let mut encoded = String::new();
        for b in q.bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    encoded.push(char::from(b))
                }
                _ => encoded.push_str(&format!("%{b:02X}")),
            }
        }
        if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            return None;
        }
        let r = tcp_get(self.addr, &format!("/api/v1/query?query={encoded}"));
        if r.status != 200 {
            return None;
        }
        let v = r.json();
        v["data"]["result"].as_array().cloned()
    }

    /// Wait up to `timeout` until `cond` holds for the result of `q`; the last result.
    pub fn wait_query(
        &self,
        q: &str,
        timeout: Duration,
        cond: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Result<Vec<serde_json::Value>, String> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(r) = self.query(q) {
                if cond(&r) {
                    return Ok(r);
                }
                last = Some(r);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "query {q:?}: waited {timeout:?}; last result {last:?}\n--- prometheus log ---\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
