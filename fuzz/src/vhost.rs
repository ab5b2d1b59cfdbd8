// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `vhost_user` target's input: a stream of vhost-user messages, each with the
//! file descriptors it carries, and the frontend thread that writes the stream into
//! the handler's socket (and drains the replies, so neither side can block the other).
//!
//! Input format, repeated up to [`MAX_MESSAGES`] times (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 12 | message header as sent: request, flags, size (size need not match the body) |
//! | 2 + n | body length, then the body bytes sent after the header |
//! | 1 | number of fds (modulo 5) |
//!
//! and per fd: a kind byte (bit 0 clear: a memfd, set: an eventfd), a u16 (memfd:
//! size in 4 KiB pages, at most [`MAX_MEMFD_PAGES`]; eventfd: its initial count), and
//! for a memfd a u16 length and that many bytes of patches ([`crate::patch`]: the
//! guest memory's content, at file offsets).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::input::{Cursor, Writer};
use crate::memory::memfd;

/// Messages decoded from one input at most.
pub const MAX_MESSAGES: usize = 64;
/// Largest memfd an input asks for (64 MiB; sparse, so cheap unless touched).
pub const MAX_MEMFD_PAGES: u16 = 16 * 1024;

/// A file descriptor attached to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdSpec {
    /// A memfd of `pages` 4 KiB pages with `content` written into it.
    Memfd {
        /// Size in pages.
        pages: u16,
        /// Patches ([`crate::patch`]) at file offsets.
        content: Vec<u8>,
    },
    /// An eventfd with this initial count.
    EventFd(u16),
}

/// One message as written to the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The 12-byte header as sent.
    pub hdr: [u8; 12],
    /// The bytes sent after the header.
    pub body: Vec<u8>,
    /// File descriptors attached to the message.
    pub fds: Vec<FdSpec>,
}

/// vhost-user header flag: protocol version 1.
pub const FLAG_VERSION: u32 = 0x1;
/// vhost-user header flag: the frontend wants a REPLY_ACK.
pub const FLAG_NEED_REPLY: u32 = 0x8;

impl Message {
    /// A well-formed message: version 1, `size` equal to the body's length.
    pub fn new(request: u32, flags: u32, body: &[u8], fds: Vec<FdSpec>) -> Self {
        let mut hdr = [0u8; 12];
        hdr[0..4].copy_from_slice(&request.to_le_bytes());
        hdr[4..8].copy_from_slice(&(flags | FLAG_VERSION).to_le_bytes());
        let size = u32::try_from(body.len()).expect("small body");
        hdr[8..12].copy_from_slice(&size.to_le_bytes());
        Message {
            hdr,
            body: body.to_vec(),
            fds,
        }
    }
}

/// Decode an input (never fails: missing fields are zero, the stream may end early).
pub fn decode(data: &[u8]) -> Vec<Message> {
    let mut c = Cursor::new(data);
    let mut msgs = Vec::new();
    while !c.is_empty() && msgs.len() < MAX_MESSAGES {
        let hdr = c.array::<12>();
        let n = usize::from(c.u16());
        let body = c.bytes(n).to_vec();
        let nfds = c.u8() % 5;
        let fds = (0..nfds)
            .map(|_| {
                let kind = c.u8();
                let v = c.u16();
                if kind & 1 == 0 {
                    let n = usize::from(c.u16());
                    FdSpec::Memfd {
                        pages: v.min(MAX_MEMFD_PAGES),
                        content: c.bytes(n).to_vec(),
                    }
                } else {
                    FdSpec::EventFd(v)
                }
            })
            .collect();
        msgs.push(Message { hdr, body, fds });
    }
    msgs
}

/// Encode messages (for seeds).
pub fn encode(msgs: &[Message]) -> Vec<u8> {
    let mut w = Writer::default();
    for m in msgs {
        w.bytes(&m.hdr)
            .u16(u16::try_from(m.body.len()).expect("body under 64 KiB"))
            .bytes(&m.body)
            .u8(u8::try_from(m.fds.len()).expect("at most 4 fds"));
        for fd in &m.fds {
            match fd {
                FdSpec::Memfd { pages, content } => {
                    w.u8(0)
                        .u16(*pages)
                        .u16(u16::try_from(content.len()).expect("content under 64 KiB"))
                        .bytes(content);
                }
                FdSpec::EventFd(count) => {
                    w.u8(1).u16(*count);
                }
            }
        }
    }
    w.0
}

fn make_fd(spec: &FdSpec) -> File {
    match spec {
        FdSpec::Memfd { pages, content } => {
            let size = u64::from(*pages) * 4096;
            let f = memfd(size);
            crate::patch::apply(content, |at, bytes| {
                let n = size.saturating_sub(at).min(bytes.len() as u64);
                f.write_all_at(&bytes[..n as usize], at)
                    .expect("fill the memfd");
            });
            f
        }
        FdSpec::EventFd(count) => {
            // SAFETY: eventfd(2) with a valid flag set; the result is checked.
            let fd =
                unsafe { libc::eventfd(u32::from(*count), libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            unsafe { File::from_raw_fd(fd) }
        }
    }
}

/// Write `msgs` into `sock` from a thread, reading (and discarding) whatever comes
/// back, then shut the write side down and wait for the handler to close its end.
pub fn spawn_frontend(sock: UnixStream, msgs: Vec<Message>) -> JoinHandle<()> {
    // Make the fds here, before the caller counts its open descriptors again.
    let mut queue: VecDeque<(Vec<u8>, Vec<File>)> = msgs
        .into_iter()
        .map(|m| {
            let mut wire = m.hdr.to_vec();
            wire.extend_from_slice(&m.body);
            (wire, m.fds.iter().map(make_fd).collect())
        })
        .collect();
    std::thread::spawn(move || {
        sock.set_nonblocking(true).expect("non-blocking socket");
        let mut off = 0usize;
        let mut shut = false;
        let mut scratch = [0u8; 4096];
        loop {
            if queue.is_empty() && !shut {
                let _ = sock.shutdown(std::net::Shutdown::Write);
                shut = true;
            }
            let mut pfd = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN | if queue.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            };
            // SAFETY: one live, initialised pollfd and a count of 1.
            let r = unsafe { libc::poll(&mut pfd, 1, 10_000) };
            if r == 0 {
                // The handler neither reads nor closes: libFuzzer's -timeout reports it.
                continue;
            }
            if r < 0 {
                continue;
            }
            if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match (&sock).read(&mut scratch) {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            if pfd.revents & libc::POLLOUT != 0 {
                let Some((wire, files)) = queue.front() else {
                    continue;
                };
                let res = if off == 0 {
                    let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
                    sock.send_with_fds(&[&wire[..]], &fds)
                        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
                } else {
                    (&sock).write(&wire[off..])
                };
                match res {
                    Ok(n) => {
                        off += n;
                        if off >= wire.len() {
                            queue.pop_front();
                            off = 0;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    // The handler closed the connection: nothing more to send.
                    Err(_) => queue.clear(),
                }
            }
        }
    })
}
