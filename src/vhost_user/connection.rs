//! The request loop of one vhost-user connection.
//!
//! Before each message the loop peeks at its header on a clone of the socket:
//! - SET_STATUS / GET_STATUS (protocol feature STATUS) are read and answered here;
//!   the protocol layer has no handler for them;
//! - a SET_VRING_ENABLE that arrives before SET_FEATURES (QEMU 7.2 sends one per ring
//!   right after SET_PROTOCOL_FEATURES, and never repeats it) is recorded here; the
//!   protocol layer then consumes it and refuses it with `InactiveFeature`, which this
//!   loop treats as expected instead of ending the connection.
//!
//! Everything else goes through `BackendReqHandler::handle_request`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::vhost_user::{BackendReqHandler, Error as VhostError};

use super::NetBackend;

const HDR_LEN: usize = 12;
const REQ_SET_VRING_ENABLE: u32 = 18;
const REQ_SET_STATUS: u32 = 39;
const REQ_GET_STATUS: u32 = 40;
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// How a connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The frontend closed the socket.
    Disconnected,
    /// The peer closed the socket before sending any request (e.g. another process
    /// probing whether the socket is in use).
    Probe,
    /// A signal asked us to stop.
    Stopped,
    /// The frontend sent something we cannot follow; the connection was closed.
    ProtocolError(String),
}

struct Peeked {
    request: u32,
    flags: u32,
    size: u32,
    body: [u8; 8],
}

/// Wait until the socket or the stop fd is readable; Ok(false) when asked to stop.
fn wait_readable(sock: &UnixStream, stop: &impl AsFd) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a live array of two initialised pollfds and the count
        // passed is its length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        return Ok(true);
    }
}

/// Peek `buf.len()` bytes without consuming them; returns how many were available.
fn peek(sock: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into the live buffer; MSG_PEEK
    // leaves the data (and any attached fds) queued for the protocol layer.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_WAITALL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

fn peek_header(sock: &UnixStream) -> io::Result<Option<Peeked>> {
    let mut b = [0u8; HDR_LEN + 8];
    if peek(sock, &mut b[..HDR_LEN])? < HDR_LEN {
        return Ok(None);
    }
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8));
    if size >= 8 && peek(sock, &mut b)? < b.len() {
        return Ok(None);
    }
    let mut body = [0u8; 8];
    body.copy_from_slice(&b[HDR_LEN..]);
    Ok(Some(Peeked {
        request,
        flags,
        size,
        body,
    }))
}

fn reply_u64(sock: &mut UnixStream, request: u32, value: u64) -> io::Result<()> {
    let mut msg = [0u8; HDR_LEN + 8];
    msg[0..4].copy_from_slice(&request.to_le_bytes());
    msg[4..8].copy_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
    msg[8..12].copy_from_slice(&8u32.to_le_bytes());
    msg[12..20].copy_from_slice(&value.to_le_bytes());
    sock.write_all(&msg)
}

/// Serve one connection until it ends. `stop` becomes readable on SIGINT/SIGTERM.
pub fn serve_connection(
    stream: UnixStream,
    backend: Arc<Mutex<NetBackend>>,
    stop: &impl AsFd,
) -> ConnectionEnd {
    let mut handler = BackendReqHandler::from_stream(stream, Arc::clone(&backend));
    let mut sock = match handler.try_clone_connection() {
        Ok(s) => s,
        Err(e) => return ConnectionEnd::ProtocolError(format!("cannot clone socket: {e}")),
    };
    let lock = || backend.lock().unwrap_or_else(|e| e.into_inner());
    let mut requests = 0u64;
    loop {
        match wait_readable(&sock, stop) {
            Ok(true) => {}
            Ok(false) => return ConnectionEnd::Stopped,
            Err(e) => return ConnectionEnd::ProtocolError(format!("poll: {e}")),
        }
        let peeked = match peek_header(&sock) {
            Ok(Some(p)) => p,
            Ok(None) if requests == 0 => return ConnectionEnd::Probe,
            Ok(None) => return ConnectionEnd::Disconnected,
            Err(e) => return ConnectionEnd::ProtocolError(format!("socket: {e}")),
        };
        if requests == 0 {
            log::info!("frontend connected");
        }
        requests += 1;
        let need_reply = peeked.flags & FLAG_NEED_REPLY != 0;
        match peeked.request {
            REQ_SET_STATUS | REQ_GET_STATUS => {
                let expected = if peeked.request == REQ_SET_STATUS {
                    8
                } else {
                    0
                };
                if peeked.size != expected {
                    return ConnectionEnd::ProtocolError(format!(
                        "status request {} with a {}-byte body",
                        peeked.request, peeked.size
                    ));
                }
                let mut msg = vec![0u8; HDR_LEN + expected as usize];
                if let Err(e) = sock.read_exact(&mut msg) {
                    return ConnectionEnd::ProtocolError(format!("socket: {e}"));
                }
                let res = if peeked.request == REQ_SET_STATUS {
                    let status = u64::from_le_bytes(peeked.body);
                    lock().set_status(u8::try_from(status).unwrap_or(u8::MAX));
                    if need_reply {
                        reply_u64(&mut sock, peeked.request, 0)
                    } else {
                        Ok(())
                    }
                } else {
                    let status = u64::from(lock().status());
                    reply_u64(&mut sock, peeked.request, status)
                };
                if let Err(e) = res {
                    return ConnectionEnd::ProtocolError(format!("socket: {e}"));
                }
                continue;
            }
            REQ_SET_VRING_ENABLE if peeked.size == 8 && !lock().protocol_features_acked() => {
                let index = u32::from_le_bytes([
                    peeked.body[0],
                    peeked.body[1],
                    peeked.body[2],
                    peeked.body[3],
                ]);
                let num = u32::from_le_bytes([
                    peeked.body[4],
                    peeked.body[5],
                    peeked.body[6],
                    peeked.body[7],
                ]);
                log::debug!("early SET_VRING_ENABLE({index}, {num}) before SET_FEATURES: recorded");
                let res = lock().record_enable(index, num == 1);
                match handler.handle_request() {
                    Err(VhostError::InactiveFeature(f))
                        if f == VhostUserVirtioFeatures::PROTOCOL_FEATURES => {}
                    Err(e) => return end_for(e),
                    Ok(()) => continue,
                }
                if need_reply {
                    if let Err(e) = reply_u64(&mut sock, peeked.request, u64::from(res.is_err())) {
                        return ConnectionEnd::ProtocolError(format!("socket: {e}"));
                    }
                }
                continue;
            }
            _ => {}
        }
        if let Err(e) = handler.handle_request() {
            match e {
                VhostError::InvalidParam
                | VhostError::InvalidOperation(_)
                | VhostError::InactiveFeature(_)
                | VhostError::InactiveOperation(_)
                | VhostError::ReqHandlerError(_)
                | VhostError::BackendInternalError => {
                    log::warn!("request {} refused: {e}", peeked.request);
                }
                e => return end_for(e),
            }
        }
    }
}

fn end_for(e: VhostError) -> ConnectionEnd {
    match e {
        VhostError::Disconnected | VhostError::PartialMessage => ConnectionEnd::Disconnected,
        VhostError::SocketBroken(ref io) | VhostError::SocketError(ref io)
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            ConnectionEnd::Disconnected
        }
        e => ConnectionEnd::ProtocolError(e.to_string()),
    }
}
