// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A raw vhost-user frontend: messages built byte by byte, written in any pieces with
//! any fds attached, for frontends that misbehave on purpose. Also the daemon's fd
//! count and RSS from /proc.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::daemon::Daemon;
use super::TIMEOUT;

/// Header flag: protocol version 1.
pub const VERSION: u32 = 0x1;
/// Header flag: the frontend wants an ack.
pub const NEED_REPLY: u32 = 0x8;
/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// Protocol features MQ | REPLY_ACK | CONFIGURE_MEM_SLOTS.
pub const PROTOCOL: u64 = (1 << 0) | (1 << 3) | (1 << 15);

/// Request codes used here.
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_KICK: u32 = 12;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const ADD_MEM_REG: u32 = 37;
}

/// A message: header then body.
pub fn message(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + body.len());
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&u32::try_from(body.len()).expect("body fits").to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// Body of a one-region SET_MEM_TABLE.
pub fn mem_table_body(gpa: u64, size: u64, user_addr: u64, offset: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [gpa, size, user_addr, offset] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// A memfd of `size` bytes.
pub fn memfd(size: u64) -> File {
    super::memory::memfd("vnm-raw", size)
}

/// A raw connection to the daemon.
pub struct RawFrontend {
    /// The socket.
    pub sock: UnixStream,
}

impl RawFrontend {
    /// Connect to `daemon`.
    pub fn connect(daemon: &mut Daemon) -> RawFrontend {
        let sock = daemon.connect(TIMEOUT);
        sock.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        RawFrontend { sock }
    }

    /// Write `bytes` with `fds` attached (one sendmsg); false when the daemon closed.
    pub fn write(&self, bytes: &[u8], fds: &[RawFd]) -> bool {
        let mut sent = match self.sock.send_with_fds(&[bytes], fds) {
            Ok(n) => n,
            Err(_) => return false,
        };
        while sent < bytes.len() {
            match self.sock.send_with_fds(&[&bytes[sent..]], &[]) {
                Ok(0) | Err(_) => return false,
                Ok(n) => sent += n,
            }
        }
        true
    }

    /// Send one message in one write.
    pub fn send(&self, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) -> bool {
        self.write(&message(request, flags, body), fds)
    }

    /// Read one reply: (request, flags, body); None on timeout or close.
    pub fn reply(&mut self) -> Option<(u32, u32, Vec<u8>)> {
        let mut hdr = [0u8; 12];
        self.sock.read_exact(&mut hdr).ok()?;
        let u = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().expect("4 bytes"));
        let mut body = vec![0u8; usize::try_from(u(8)).ok()?];
        self.sock.read_exact(&mut body).ok()?;
        Some((u(0), u(4), body))
    }

    /// A request answered with a u64 (a GET or an ack).
    pub fn request_u64(&mut self, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) -> u64 {
        assert!(
            self.send(request, flags, body, fds),
            "daemon closed the socket"
        );
        let (code, _, body) = self.reply().expect("a reply");
        assert_eq!(code, request, "reply to the wrong request");
        u64::from_le_bytes(body[..8].try_into().expect("8 bytes"))
    }

    /// Negotiate features (VERSION_1, PROTOCOL_FEATURES) and REPLY_ACK: from here on
    /// a NEED_REPLY request gets an ack (0: done).
    pub fn setup(&mut self) {
        assert!(self.send(req::SET_OWNER, VERSION, &[], &[]));
        let offered = self.request_u64(req::GET_FEATURES, VERSION, &[], &[]);
        let want = F_VERSION_1 | F_PROTOCOL_FEATURES;
        assert_eq!(offered & want, want, "features offered: {offered:#x}");
        assert!(self.send(req::SET_FEATURES, VERSION, &want.to_le_bytes(), &[]));
        let proto = self.request_u64(req::GET_PROTOCOL_FEATURES, VERSION, &[], &[]);
        assert!(self.send(
            req::SET_PROTOCOL_FEATURES,
            VERSION,
            &(proto & PROTOCOL).to_le_bytes(),
            &[]
        ));
    }

    /// Whether the daemon closed the connection within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let mut b = [0u8; 256];
        while Instant::now() < deadline {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }

    /// The raw fd (for pieces written by hand).
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident set size of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
