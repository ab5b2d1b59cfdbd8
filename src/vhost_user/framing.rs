// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vhost-user message framing: whole messages out of a byte stream that a frontend may
//! write in any number of pieces.
//!
//! The protocol layer (`vhost`'s `Endpoint`) reads a header with one loop of `recvmsg`
//! and the body with a single one, so a body written in two pieces is taken for an
//! invalid message; and `MSG_PEEK|MSG_WAITALL` does not wait on an AF_UNIX stream
//! socket. [`read_message`] reassembles one message here instead: the 12-byte header,
//! then as many body bytes as it announces (at most [`MAX_BODY`]), collecting the file
//! descriptors of every piece. Once the first byte of a message arrived, the rest must
//! follow within [`STALL_TIMEOUT`]. The connection loop then hands the whole message
//! to the protocol layer in one `sendmsg` over an internal socket pair.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Size of a vhost-user message header.
pub const HDR_LEN: usize = 12;
/// Largest body a message may announce (the protocol's MAX_MSG_SIZE).
pub const MAX_BODY: usize = vhost::vhost_user::message::MAX_MSG_SIZE;
/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = vhost::vhost_user::message::MAX_ATTACHED_FD_ENTRIES;
/// How long the rest of a message may take once its first byte arrived.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of message framing; each ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The frontend stopped sending in the middle of a message.
    #[error("frontend stalled mid-message: {have} of {want} bytes after {waited:?}")]
    Stalled {
        /// Bytes received.
        have: usize,
        /// Bytes the message needs (header, or header and body).
        want: usize,
        /// How long we waited.
        waited: Duration,
    },
    /// The frontend closed the socket in the middle of a message.
    #[error("frontend closed the socket mid-message: {have} of {want} bytes")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the message needs.
        want: usize,
    },
    /// The header announces a body larger than the protocol allows.
    #[error("request {request} announces a {size}-byte body; the limit is {MAX_BODY}")]
    Oversized {
        /// Request code.
        request: u32,
        /// Announced size.
        size: u32,
    },
    /// Reading the socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// One whole message.
#[derive(Debug)]
pub struct Message {
    /// Header and body, as received.
    pub bytes: Vec<u8>,
    /// File descriptors attached to any of its pieces.
    pub fds: Vec<File>,
}

impl Message {
    fn word(&self, i: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.bytes[i..i + 4]);
        u32::from_le_bytes(w)
    }

    /// Request code.
    pub fn request(&self) -> u32 {
        self.word(0)
    }

    /// Header flags.
    pub fn flags(&self) -> u32 {
        self.word(4)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HDR_LEN..]
    }
}

/// What waiting for the next message gave.
#[derive(Debug)]
pub enum Next {
    /// A whole message.
    Message(Message),
    /// The frontend closed the socket between messages.
    Closed,
    /// One of the other fds became readable first (index into `others`).
    Other(usize),
}

/// Wait until `fds` has a readable entry, at most `timeout` (None: forever); the
/// indices of the readable ones.
fn poll(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up, so that a short wait is not a busy loop; zero stays zero.
    let ms = timeout.map_or(-1, |t| {
        let ms = t.as_nanos().div_ceil(1_000_000);
        i32::try_from(ms).unwrap_or(i32::MAX)
    });
    let n = libc::nfds_t::try_from(pfds.len()).map_err(io::Error::other)?;
    loop {
        // SAFETY: `pfds` is a live array of initialised pollfds and `n` its length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), n, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(pfds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents != 0)
            .map(|(i, _)| i)
            .collect());
    }
}

/// Receive into `buf`, taking up to `MAX_FDS - fds.len()` descriptors into `fds`
/// (any beyond are closed by the kernel); bytes read (0: end of stream).
fn recv_piece(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<File>) -> io::Result<usize> {
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let room = MAX_FDS.saturating_sub(fds.len()).max(1);
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points into `buf`, live and exclusively borrowed for the call,
    // and any bytes may be written there.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw[..room]) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    for &fd in raw.iter().take(nfds) {
        // SAFETY: recv_with_fds hands over `nfds` fresh descriptors that we now own.
        let f = unsafe { File::from_raw_fd(fd) };
        if fds.len() < MAX_FDS {
            fds.push(f);
        }
    }
    Ok(n)
}

/// Read one whole message from `sock`; `others` are polled alongside while waiting for
/// its first byte (a stop signal, the memory fault notifier).
pub fn read_message(sock: &UnixStream, others: &[BorrowedFd<'_>]) -> Result<Next, FramingError> {
    let mut fds_to_poll: Vec<BorrowedFd<'_>> = Vec::with_capacity(others.len() + 1);
    fds_to_poll.push(sock.as_fd());
    fds_to_poll.extend_from_slice(others);
    let ready = poll(&fds_to_poll, None)?;
    if let Some(&i) = ready.iter().find(|&&i| i > 0) {
        return Ok(Next::Other(i - 1));
    }
    let mut bytes = vec![0u8; HDR_LEN];
    let mut fds = Vec::new();
    let mut have = 0usize;
    let mut want = HDR_LEN;
    let mut started: Option<Instant> = None;
    loop {
        if have == want {
            if want > HDR_LEN {
                break;
            }
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[8..12]);
            let size = u32::from_le_bytes(w);
            let body = usize::try_from(size)
                .ok()
                .filter(|s| *s <= MAX_BODY)
                .ok_or_else(|| {
                    let mut r = [0u8; 4];
                    r.copy_from_slice(&bytes[0..4]);
                    FramingError::Oversized {
                        request: u32::from_le_bytes(r),
                        size,
                    }
                })?;
            if body == 0 {
                break;
            }
            want = HDR_LEN + body;
            bytes.resize(want, 0);
        }
        if let Some(t0) = started {
            let waited = t0.elapsed();
            let left = STALL_TIMEOUT.saturating_sub(waited);
            if left.is_zero() || poll(&[sock.as_fd()], Some(left))?.is_empty() {
                return Err(FramingError::Stalled {
                    have,
                    want,
                    waited: t0.elapsed(),
                });
            }
        }
        let n = match recv_piece(sock, &mut bytes[have..want], &mut fds) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if have == 0 && e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok(Next::Closed)
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            if have == 0 {
                return Ok(Next::Closed);
            }
            return Err(FramingError::Truncated { have, want });
        }
        started.get_or_insert_with(Instant::now);
        have = have.saturating_add(n).min(want);
    }
    Ok(Next::Message(Message { bytes, fds }))
}

/// Send `bytes` with `fds` attached in one `sendmsg` (then the rest, if the socket
/// took only part).
pub fn send_all(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut sent = if fds.is_empty() {
        0
    } else {
        sock.send_with_fds(&[bytes], fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?
    };
    while sent < bytes.len() {
        let n = sock
            .send_with_fds(&[&bytes[sent..]], &[])
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent = sent.saturating_add(n);
    }
    Ok(())
}

/// Take everything queued on `sock` now (bytes and descriptors) without waiting.
pub fn drain(sock: &UnixStream) -> io::Result<(Vec<u8>, Vec<File>)> {
    let mut out = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    while !poll(&[sock.as_fd()], Some(Duration::ZERO))?.is_empty() {
        let n = recv_piece(sock, &mut buf, &mut fds)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok((out, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(request: u32, size: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&request.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h
    }

    #[test]
    fn a_message_in_pieces_with_fds_on_the_first_is_reassembled() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let f = File::open("/dev/null").unwrap();
        let mut msg = header(5, 8);
        msg.extend_from_slice(&7u64.to_le_bytes());
        let t = std::thread::spawn(move || {
            send_all(&a, &msg[..3], &[f.as_raw_fd()]).unwrap();
            for piece in [&msg[3..12], &msg[12..15], &msg[15..]] {
                std::thread::sleep(Duration::from_millis(30));
                a.write_all(piece).unwrap();
            }
            a
        });
        let Next::Message(m) = read_message(&b, &[]).unwrap() else {
            panic!("no message");
        };
        assert_eq!(
            (m.request(), m.flags(), m.body()),
            (5, 1, &7u64.to_le_bytes()[..])
        );
        assert_eq!(m.fds.len(), 1);
        drop(t.join().unwrap());
        assert!(matches!(read_message(&b, &[]).unwrap(), Next::Closed));
    }

    #[test]
    fn a_stall_mid_message_is_an_error_in_bounded_time() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&header(1, 0)[..5]).unwrap();
        let t0 = Instant::now();
        let e = read_message(&b, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                FramingError::Stalled {
                    have: 5,
                    want: 12,
                    ..
                }
            ),
            "{e}"
        );
        assert!(t0.elapsed() < STALL_TIMEOUT + Duration::from_secs(1));
    }

    #[test]
    fn a_partial_header_then_close_is_not_a_clean_close() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&header(1, 0)[..4]).unwrap();
        drop(a);
        let e = read_message(&b, &[]).unwrap_err();
        assert!(
            matches!(e, FramingError::Truncated { have: 4, want: 12 }),
            "{e}"
        );
    }

    #[test]
    fn an_oversized_body_is_refused_before_reading_it() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&header(2, 0x10_0000)).unwrap();
        let e = read_message(&b, &[]).unwrap_err();
        assert!(
            matches!(e, FramingError::Oversized { request: 2, .. }),
            "{e}"
        );
    }
}
