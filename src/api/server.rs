// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The HTTP server loop: one thread polls the listeners and every open connection,
//! all non-blocking, so that a slow or silent client holds only its own connection.
//!
//! Limits: [`MAX_CONNECTIONS`] open at once (the listeners are not polled beyond),
//! [`DEADLINE`] for a connection from accept to its reply written, the head and body
//! sizes of [`super::http`]. One request per connection: the reply is written, the
//! write side shut, and what the client still sends is read and dropped until it
//! closes (at most [`LINGER`]) so that it sees the reply rather than a reset.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{self, HttpError, Response, MAX_BODY, MAX_HEAD};
use super::listen::Listener;
use super::routes::{ApiState, Role};
use crate::log_limit::LogLimiter;

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time from accept to the reply written.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Time a closing connection is drained for.
pub const LINGER: Duration = Duration::from_secs(1);
/// Reads from one connection in one turn of the loop.
const READS_PER_TURN: usize = 16;
/// How long the listeners are left alone after an accept failed (out of fds, ...), so
/// that a listener that stays readable does not spin the loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Longest sleep between looks at the stop flag.
const TICK: Duration = Duration::from_millis(200);

/// An accepted connection's socket.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// Where a connection is.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the request.
    Reading,
    /// Writing the reply, `written` bytes of it so far.
    Writing { written: usize },
    /// Reply written, write side shut: dropping what comes until the client closes.
    Draining,
}

#[derive(Debug)]
struct Connection {
    stream: Stream,
    role: Role,
    input: Vec<u8>,
    reply: Vec<u8>,
    phase: Phase,
    deadline: Instant,
}

impl Connection {
    fn respond(&mut self, r: Response) {
        self.reply = r.to_bytes();
        self.phase = Phase::Writing { written: 0 };
    }

    /// Read what is there (at most [`READS_PER_TURN`] reads, so that a flooding client
    /// cannot hold the loop); false when the connection is done with.
    fn on_readable(&mut self, state: &ApiState) -> bool {
        let mut buf = [0u8; 4096];
        for _ in 0..READS_PER_TURN {
            match self.stream.read(&mut buf) {
                Ok(0) if self.phase == Phase::Reading && !self.input.is_empty() => {
                    // The client shut its side mid-request; it may still read this.
                    self.respond(Response::error(400, "request ended before it was complete"));
                    return true;
                }
                // Closed: before a request (a probe), or after the reply.
                Ok(0) => return false,
                Ok(_) if self.phase != Phase::Reading => {}
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    match http::parse_request(&self.input) {
                        Ok(Some(req)) => {
                            let reply = state.route(self.role, &req);
                            self.respond(reply);
                        }
                        Ok(None) if self.input.len() > MAX_HEAD + MAX_BODY => {
                            self.respond(Response::error(413, "request too large"))
                        }
                        Ok(None) => {}
                        Err(e) => self.respond(http_error(&e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Write what the socket takes; false when the connection is done with.
    fn on_writable(&mut self) -> bool {
        while let Phase::Writing { written } = self.phase {
            if written == self.reply.len() {
                self.stream.shutdown_write();
                self.phase = Phase::Draining;
                self.deadline = self.deadline.min(Instant::now() + LINGER);
                return true;
            }
            match self.stream.write(&self.reply[written..]) {
                Ok(n) => {
                    self.phase = Phase::Writing {
                        written: written + n,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn events(&self) -> libc::c_short {
        match self.phase {
            Phase::Reading | Phase::Draining => libc::POLLIN,
            Phase::Writing { .. } => libc::POLLOUT,
        }
    }
}

fn http_error(e: &HttpError) -> Response {
    Response::error(e.status(), &e.to_string())
}

/// Accept one connection from `listener`, if one is waiting.
fn accept(listener: &Listener) -> io::Result<Option<Stream>> {
    let r = match listener {
        Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        Listener::Unix { listener, .. } => listener.accept().map(|(s, _)| Stream::Unix(s)),
    };
    match r {
        Ok(s) => {
            match &s {
                Stream::Tcp(t) => t.set_nonblocking(true)?,
                Stream::Unix(u) => u.set_nonblocking(true)?,
            }
            Ok(Some(s))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The listeners and their connections.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<(Listener, Role)>,
    connections: Vec<Connection>,
    state: Arc<ApiState>,
    /// No accepting before this (after an accept failed).
    accept_after: Option<Instant>,
    accept_errors: LogLimiter,
}

impl Server {
    /// Serve `state` on `listeners`.
    pub fn new(listeners: Vec<(Listener, Role)>, state: Arc<ApiState>) -> Self {
        Server {
            listeners,
            connections: Vec::new(),
            state,
            accept_after: None,
            accept_errors: LogLimiter::new(1),
        }
    }

    /// Serve until `stop` is set (looked at every 200 ms at least).
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            if let Err(e) = self.turn() {
                log::warn!("api: poll failed: {e}");
                std::thread::sleep(TICK);
            }
        }
    }

    /// One poll and what it found.
    fn turn(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let accepting = self.connections.len() < MAX_CONNECTIONS
            && self.accept_after.map_or(true, |t| now >= t);
        let mut fds: Vec<libc::pollfd> = Vec::new();
        if accepting {
            for (l, _) in &self.listeners {
                fds.push(pollfd(l.as_fd(), libc::POLLIN));
            }
        }
        for c in &self.connections {
            fds.push(pollfd(c.stream.as_fd(), c.events()));
        }
        let wait = self
            .connections
            .iter()
            .map(|c| c.deadline)
            .chain(self.accept_after)
            .map(|t| t.saturating_duration_since(now))
            .min()
            .unwrap_or(TICK)
            .min(TICK);
        poll(&mut fds, wait)?;
        let (listener_fds, conn_fds) =
            fds.split_at(if accepting { self.listeners.len() } else { 0 });
        // Connections first (their indices match `conn_fds`), then new ones.
        let state = Arc::clone(&self.state);
        let now = Instant::now();
        let mut keep = Vec::with_capacity(self.connections.len());
        for (mut c, fd) in self.connections.drain(..).zip(conn_fds) {
            let mut alive = true;
            let readable = fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
            if readable && matches!(c.phase, Phase::Reading | Phase::Draining) {
                alive = c.on_readable(&state);
            }
            if alive && matches!(c.phase, Phase::Writing { .. }) {
                alive = c.on_writable();
            }
            if alive && now >= c.deadline {
                if c.phase == Phase::Reading {
                    // One last try to tell the client why.
                    c.respond(Response::error(408, "request not received in time"));
                    let _ = c.on_writable();
                }
                alive = false;
            }
            if alive {
                keep.push(c);
            }
        }
        self.connections = keep;
        for ((l, role), fd) in self.listeners.iter().zip(listener_fds) {
            if fd.revents == 0 {
                continue;
            }
            while self.connections.len() < MAX_CONNECTIONS {
                match accept(l) {
                    Ok(Some(stream)) => self.connections.push(Connection {
                        stream,
                        role: *role,
                        input: Vec::new(),
                        reply: Vec::new(),
                        phase: Phase::Reading,
                        deadline: now + DEADLINE,
                    }),
                    Ok(None) => break,
                    Err(e) => {
                        crate::log_limited!(self.accept_errors, warn, "api: accept failed: {e}");
                        self.accept_after = Some(now + ACCEPT_PAUSE);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove the unix socket files (at exit).
    pub fn remove_files(&self) {
        for (l, _) in &self.listeners {
            l.remove_file();
        }
    }
}

fn pollfd(fd: BorrowedFd<'_>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], wait: Duration) -> io::Result<()> {
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a live slice of initialised pollfds and `n` is its length; the
    // kernel writes only their `revents`.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use clap::Parser;

    use super::*;
    use crate::api::listen::ListenAddr;
    use crate::config::{Cli, NetConfig};
    use crate::metrics::DeviceMetrics;
    use crate::ratelimit::{PairLimits, RateLimits};

    /// A request sent in pieces beside a silent connection is served at once; the
    /// silent one gets 408 at its deadline.
    #[test]
    fn connections_are_served_side_by_side() {
        let dir = std::env::temp_dir().join(format!("vnm-server-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("api.sock");
        let listener = Listener::bind("--api-socket", &ListenAddr::Unix(path.clone())).unwrap();
        let cli = Cli::try_parse_from(["vnm", "--socket", "/tmp/s", "--uplink", "null"]).unwrap();
        let state = ApiState::new(
            Arc::new(NetConfig::from_cli(cli).unwrap()),
            Arc::new(DeviceMetrics::new(1)),
            Arc::new(RateLimits::new(1, PairLimits::default())),
        );
        let mut server = Server::new(vec![(listener, Role::Api)], Arc::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let t = std::thread::spawn(move || {
            server.run(&flag);
            server
        });
        let mut silent = UnixStream::connect(&path).unwrap();
        let start = Instant::now();
        let mut c = UnixStream::connect(&path).unwrap();
        for piece in [&b"GET /sta"[..], b"ts HTTP/1.1\r\n", b"\r\n"] {
            c.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(start.elapsed() < Duration::from_secs(1));
        let mut reply = String::new();
        silent.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
        assert!(start.elapsed() >= DEADLINE);
        stop.store(true, Ordering::Release);
        let server = t.join().unwrap();
        server.remove_files();
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }
}
