// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The real `vhost-netmem` binary as a child process.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::NetNs;
use super::stats::Stats;
use super::unique;

/// Path of the daemon binary built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_vhost-netmem");

/// The daemon's stderr, collected by a reader thread (shared with failure messages).
#[derive(Clone, Default)]
pub struct DaemonLog(Arc<Mutex<String>>);

impl DaemonLog {
    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A block to append to a failure message.
    pub fn context(&self) -> String {
        format!("\n--- daemon stderr ---\n{}--- end ---", self.text())
    }
}

/// A running daemon. Dropping it kills the process (by PID) and removes its files.
pub struct Daemon {
    child: Child,
    /// The vhost-user socket path (`--socket`), when this harness chose it.
    pub socket: PathBuf,
    /// The `--stats-file` path, when this harness chose it.
    pub stats_file: PathBuf,
    log: DaemonLog,
    reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn spawn_reader(child: &mut Child, log: &DaemonLog) -> JoinHandle<()> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut s) = log.0.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    })
}

impl Daemon {
    /// Start the daemon with `--socket` and `--stats-file` chosen here plus `args`,
    /// inside `netns` when given. `RUST_LOG` defaults to `info`.
    pub fn spawn(args: &[&str], netns: Option<&NetNs>) -> Daemon {
        let base = unique("/tmp/vnmt");
        let socket = PathBuf::from(format!("{base}.sock"));
        let stats_file = PathBuf::from(format!("{base}.json"));
        let mut full: Vec<String> = vec![
            "--socket".into(),
            socket.display().to_string(),
            "--stats-file".into(),
            stats_file.display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name(), BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(&full);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        Self::start(cmd, socket, stats_file)
    }

    /// Start the daemon with exactly `args` (command-line tests): default logging,
    /// `RUST_BACKTRACE=1` so that a panic could not hide.
    pub fn spawn_raw(args: &[&str]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1");
        Self::start(cmd, PathBuf::new(), PathBuf::new())
    }

    /// Start `cmd` as the daemon (stdin and stdout closed, stderr collected);
    /// `socket` and `stats_file` are its paths when the caller chose them (empty
    /// otherwise), removed on drop.
    pub fn start(mut cmd: Command, socket: PathBuf, stats_file: PathBuf) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let log = DaemonLog::default();
        let reader = Some(spawn_reader(&mut child, &log));
        Daemon {
            child,
            socket,
            stats_file,
            log,
            reader,
            status: None,
        }
    }

    /// The stderr collector.
    pub fn log(&self) -> DaemonLog {
        self.log.clone()
    }

    /// Everything the daemon printed so far.
    pub fn stderr(&self) -> String {
        self.log.text()
    }

    /// Panic with `msg` and the daemon's stderr.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}{}", self.log.context())
    }

    /// The exit status if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waitpid");
        }
        self.status
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Panic unless the process still runs.
    pub fn assert_running(&mut self, when: &str) {
        if let Some(st) = self.try_status() {
            self.fail(&format!("daemon exited ({st}) {when}"));
        }
    }

    /// Wait up to `timeout` for the process to end; the full stderr is then available.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.try_status() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Connect to the daemon's socket, waiting for it to listen; fails if the daemon
    /// exits or does not listen within `timeout`.
    pub fn connect(&mut self, timeout: Duration) -> UnixStream {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => return s,
                Err(e) => {
                    if let Some(st) = self.try_status() {
                        let _ = self.wait_exit(Duration::from_secs(1));
                        self.fail(&format!(
                            "daemon exited ({st}) before accepting a connection on {}",
                            self.socket.display()
                        ));
                    }
                    if Instant::now() >= deadline {
                        self.fail(&format!(
                            "daemon did not listen on {} within {timeout:?}: {e}",
                            self.socket.display()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Wait until the socket file exists (the daemon has bound and listens) without
    /// connecting to it.
    pub fn wait_socket_file(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.socket.exists() {
            self.assert_running("before creating its socket");
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no socket file {} within {timeout:?}",
                    self.socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until the daemon's stderr contains `needle` (its lines reach us through a
    /// pipe, a little after the daemon acted); returns the stderr so far.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr();
            if text.contains(needle) {
                return text;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "waited {timeout:?} for {needle:?} in the daemon's stderr"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The current stats file, if written.
    pub fn stats(&self) -> Option<Stats> {
        Stats::read(&self.stats_file)
    }

    /// Wait until the stats file satisfies `cond` (described by `what`); return it.
    pub fn wait_stats(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Stats) -> bool,
    ) -> Stats {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if let Some(s) = &s {
                if cond(s) {
                    return s.clone();
                }
            }
            if Instant::now() >= deadline {
                let shown = s.map_or_else(
                    || format!("no stats file at {}", self.stats_file.display()),
                    |s| s.to_string(),
                );
                self.fail(&format!(
                    "stats: waited {timeout:?} for {what}; last document: {shown}"
                ));
            }
            if self.try_status().is_some() && s.is_some() {
                // The daemon is gone: its file will not change any more.
                let shown = s.map(|s| s.to_string()).unwrap_or_default();
                self.fail(&format!(
                    "daemon exited while waiting for stats: {what}; last document: {shown}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CPU time (user + system, in clock ticks) of every thread of the daemon.
    pub fn cpu_ticks(&self) -> u64 {
        let pid = self.pid();
        let mut total = 0;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised command name: state is field 3, utime 14,
            // stime 15.
            let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 12 {
                total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            }
        }
        total
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path helper for tests that reuse a socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if !self.socket.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.socket);
        }
        if !self.stats_file.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.stats_file);
            let _ = std::fs::remove_file(self.stats_file.with_extension("tmp"));
        }
    }
}
