// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The request loop of one vhost-user connection.
//!
//! Each message is first read whole from the frontend's socket ([`super::framing`]:
//! any split into pieces, a bounded wait when the frontend stalls mid-message), then:
//! - SET_STATUS / GET_STATUS (protocol feature STATUS), SEND_RARP (RARP) and SET_LOG_FD
//!   (LOG_SHMFD) are answered here; the protocol layer has no handler for them;
//! - a SET_VRING_ENABLE that arrives before SET_FEATURES (QEMU 7.2 sends one per ring
//!   right after SET_PROTOCOL_FEATURES, and never repeats it) is recorded here; the
//!   protocol layer then refuses it with `InactiveFeature`, which this loop treats as
//!   expected instead of as a refusal;
//! - everything else goes to `BackendReqHandler::handle_request`, over an internal
//!   socket pair: the whole message in one `sendmsg`, the replies relayed back to the
//!   frontend, and whatever the protocol layer left unread discarded, so one bad
//!   message never desynchronises the next.
//!
//! A refused request is counted (`control.refused` in the stats file, by request and
//! reason), logged rate-limited, answered with a failure ack when the frontend asked
//! for one and got no reply, and the connection goes on. The connection ends (counted
//! too) when the frontend closes it, sends something that is not a well-formed
//! message (framing errors, a body of the wrong size, wrong fds), on socket errors, or
//! when its guest memory faulted (see [`crate::netmem::fault`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{BackendReqHandler, Error as VhostError};

use super::framing::{self, FramingError, Message, Next, HDR_LEN, STALL_TIMEOUT};
use super::NetBackend;
use crate::metrics::ControlMetrics;
use crate::netmem::fault;

const REQ_SET_LOG_BASE: u32 = 6;
const REQ_SET_LOG_FD: u32 = 7;
const REQ_SET_VRING_ENABLE: u32 = 18;
const REQ_SEND_RARP: u32 = 19;
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
    /// The peer closed the socket before sending any byte (e.g. another process
    /// probing whether the socket is in use).
    Probe,
    /// A signal asked us to stop.
    Stopped,
    /// The frontend sent something we cannot follow; the connection was closed.
    ProtocolError(String),
    /// The frontend's guest memory faulted (its file shrank under the mapping).
    MemoryFault,
}

/// The vhost-user name of request `code` (lowercase, for logs and counters).
pub fn request_name(code: u32) -> &'static str {
    const NAMES: [&str; 44] = [
        "none",
        "get_features",
        "set_features",
        "set_owner",
        "reset_owner",
        "set_mem_table",
        "set_log_base",
        "set_log_fd",
        "set_vring_num",
        "set_vring_addr",
        "set_vring_base",
        "get_vring_base",
        "set_vring_kick",
        "set_vring_call",
        "set_vring_err",
        "get_protocol_features",
        "set_protocol_features",
        "get_queue_num",
        "set_vring_enable",
        "send_rarp",
        "net_set_mtu",
        "set_backend_req_fd",
        "iotlb_msg",
        "set_vring_endian",
        "get_config",
        "set_config",
        "create_crypto_session",
        "close_crypto_session",
        "postcopy_advise",
        "postcopy_listen",
        "postcopy_end",
        "get_inflight_fd",
        "set_inflight_fd",
        "gpu_set_socket",
        "reset_device",
        "vring_kick",
        "get_max_mem_slots",
        "add_mem_reg",
        "rem_mem_reg",
        "set_status",
        "get_status",
        "get_shared_object",
        "set_device_state_fd",
        "check_device_state",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("unknown")
}

/// The reason name of a protocol-layer error (for counters).
fn reason(e: &VhostError) -> &'static str {
    match e {
        VhostError::InvalidParam => "invalid_param",
        VhostError::InvalidOperation(_) => "invalid_operation",
        VhostError::InactiveFeature(_) => "inactive_feature",
        VhostError::InactiveOperation(_) => "inactive_operation",
        VhostError::InvalidMessage => "invalid_message",
        VhostError::IncorrectFds => "incorrect_fds",
        VhostError::OversizedMsg => "oversized_message",
        VhostError::ReqHandlerError(_) => "handler_error",
        VhostError::BackendInternalError => "backend_internal_error",
        VhostError::FeatureMismatch => "feature_mismatch",
        _ => "other",
    }
}

/// Whether a protocol-layer error ends the connection: the internal socket pair itself
/// failed, or the message is malformed (wrong body size for its request, wrong fds:
/// a frontend that sends those is not following the protocol, as libvhost-user
/// judges too), rather than a well-formed request that was refused.
fn is_fatal(e: &VhostError) -> bool {
    matches!(
        e,
        VhostError::InvalidMessage
            | VhostError::IncorrectFds
            | VhostError::OversizedMsg
            | VhostError::SocketError(_)
            | VhostError::SocketBroken(_)
            | VhostError::SocketConnect(_)
            | VhostError::SocketRetry(_)
            | VhostError::Disconnected
            | VhostError::PartialMessage
    )
}

/// Send a reply to `request` carrying `body`.
fn send_reply(sock: &UnixStream, request: u32, body: &[u8]) -> io::Result<()> {
    let size =
        u32::try_from(body.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut msg = Vec::with_capacity(HDR_LEN + body.len());
    msg.extend_from_slice(&request.to_le_bytes());
    msg.extend_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
    msg.extend_from_slice(&size.to_le_bytes());
    msg.extend_from_slice(body);
    framing::send_all(sock, &msg, &[])
}

fn reply_u64(sock: &UnixStream, request: u32, value: u64) -> io::Result<()> {
    send_reply(sock, request, &value.to_le_bytes())
}

fn u32_at(body: &[u8], i: usize) -> Option<u32> {
    let b = body.get(i..i.checked_add(4)?)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(b);
    Some(u32::from_le_bytes(w))
}

/// One connection: the frontend's socket and the protocol layer behind its socket pair.
struct Conn<'a> {
    frontend: UnixStream,
    handler: BackendReqHandler<Mutex<NetBackend>>,
    /// Our end of the pair: requests go in, replies come out.
    inner: UnixStream,
    /// A clone of the protocol layer's end, to discard what it left unread.
    handler_end: UnixStream,
    backend: Arc<Mutex<NetBackend>>,
    control: &'a ControlMetrics,
}

impl Conn<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetBackend> {
        self.backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(&self, request: u32, why: &'static str, detail: &dyn std::fmt::Display) {
        let name = request_name(request);
        self.control.refused(name, why);
        crate::log_limited!(
            super::control_log(),
            warn,
            "request {name} ({request}) refused: {detail}"
        );
    }

    /// Give `msg` to the protocol layer and relay its replies; Err ends the connection.
    fn dispatch(&mut self, msg: &Message) -> Result<Result<(), VhostError>, String> {
        let started = std::time::Instant::now();
        let res = self.relay(msg);
        log::trace!(
            "{} handled in {} us",
            request_name(msg.request()),
            started.elapsed().as_micros()
        );
        res
    }

    fn relay(&mut self, msg: &Message) -> Result<Result<(), VhostError>, String> {
        let fds: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
        framing::send_all(&self.inner, &msg.bytes, &fds)
            .map_err(|e| format!("internal socket: {e}"))?;
        let res = self.handler.handle_request();
        // Whatever the protocol layer did not read (it stopped at a bad header) goes.
        let (left, left_fds) =
            framing::drain(&self.handler_end).map_err(|e| format!("internal socket: {e}"))?;
        drop(left_fds);
        if !left.is_empty() {
            log::debug!("discarded {} unread bytes of a refused request", left.len());
        }
        let (reply, reply_fds) =
            framing::drain(&self.inner).map_err(|e| format!("internal socket: {e}"))?;
        if !reply.is_empty() {
            let raw: Vec<RawFd> = reply_fds.iter().map(AsRawFd::as_raw_fd).collect();
            framing::send_all(&self.frontend, &reply, &raw).map_err(|e| format!("socket: {e}"))?;
        } else if res.is_err()
            && msg.request() == REQ_SET_LOG_BASE
            && self
                .lock()
                .protocol_acked(VhostUserProtocolFeatures::LOG_SHMFD)
        {
            // With LOG_SHMFD the frontend waits for SET_LOG_BASE's reply, a log region,
            // whatever the flags (QEMU checks only its request code, rust-vmm's
            // frontend its size): an empty region, so that it stays in step. Logging
            // did not start; the SET_FEATURES with LOG_ALL that follows is refused.
            send_reply(&self.frontend, REQ_SET_LOG_BASE, &[0u8; 16])
                .map_err(|e| format!("socket: {e}"))?;
        } else if res.is_err()
            && msg.flags() & FLAG_NEED_REPLY != 0
            && self.lock().reply_ack_acked()
        {
            // The frontend waits for an ack the protocol layer did not send: a failure.
            reply_u64(&self.frontend, msg.request(), 1).map_err(|e| format!("socket: {e}"))?;
        }
        Ok(res)
    }

    fn status(&mut self, msg: &Message) -> Result<(), String> {
        let request = msg.request();
        let expected = if request == REQ_SET_STATUS { 8 } else { 0 };
        if msg.body().len() != expected {
            self.refused(request, "invalid_message", &"wrong body size");
            if msg.flags() & FLAG_NEED_REPLY != 0 {
                return reply_u64(&self.frontend, request, 1).map_err(|e| format!("socket: {e}"));
            }
            return Ok(());
        }
        let res = if request == REQ_SET_STATUS {
            let mut v = [0u8; 8];
            v.copy_from_slice(msg.body());
            let status = u64::from_le_bytes(v);
            self.lock()
                .set_status(u8::try_from(status).unwrap_or(u8::MAX));
            if msg.flags() & FLAG_NEED_REPLY != 0 {
                reply_u64(&self.frontend, request, 0)
            } else {
                Ok(())
            }
        } else {
            let status = u64::from(self.lock().status());
            reply_u64(&self.frontend, request, status)
        };
        res.map_err(|e| format!("socket: {e}"))
    }

    fn early_enable(&mut self, msg: &Message) -> Result<(), String> {
        let body = msg.body();
        let (Some(index), Some(num)) = (u32_at(body, 0), u32_at(body, 4)) else {
            return Err("short SET_VRING_ENABLE".into());
        };
        log::debug!("early SET_VRING_ENABLE({index}, {num}) before SET_FEATURES: recorded");
        let recorded = self.lock().record_enable(index, num == 1);
        if let Err(e) = &recorded {
            self.refused(REQ_SET_VRING_ENABLE, reason(e), e);
        }
        match self.dispatch(msg)? {
            Err(VhostError::InactiveFeature(f))
                if f == VhostUserVirtioFeatures::PROTOCOL_FEATURES => {}
            Err(e) if is_fatal(&e) => {
                self.control
                    .refused(request_name(REQ_SET_VRING_ENABLE), reason(&e));
                return Err(e.to_string());
            }
            Err(e) => {
                self.refused(REQ_SET_VRING_ENABLE, reason(&e), &e);
                return Ok(());
            }
            Ok(()) => return Ok(()),
        }
        if msg.flags() & FLAG_NEED_REPLY != 0 {
            reply_u64(
                &self.frontend,
                REQ_SET_VRING_ENABLE,
                u64::from(recorded.is_err()),
            )
            .map_err(|e| format!("socket: {e}"))?;
        }
        Ok(())
    }

    /// Answer a request handled here: a failure ack when refused (and asked for an
    /// ack), a success ack when asked for one.
    fn ack(&self, msg: &Message, res: Result<(), (&'static str, String)>) -> Result<(), String> {
        let request = msg.request();
        if let Err((why, detail)) = &res {
            self.refused(request, why, detail);
        }
        if msg.flags() & FLAG_NEED_REPLY != 0 && self.lock().reply_ack_acked() {
            reply_u64(&self.frontend, request, u64::from(res.is_err()))
                .map_err(|e| format!("socket: {e}"))?;
        }
        Ok(())
    }

    /// VHOST_USER_SEND_RARP (protocol feature RARP): the guest's MAC in a u64.
    fn send_rarp(&mut self, msg: &Message) -> Result<(), String> {
        let res = if !self.lock().protocol_acked(VhostUserProtocolFeatures::RARP) {
            Err((
                "inactive_feature",
                "protocol feature RARP not acked".to_string(),
            ))
        } else if msg.body().len() != 8 || !msg.fds.is_empty() {
            Err((
                "invalid_message",
                "SEND_RARP carries a u64 and no fds".to_string(),
            ))
        } else {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&msg.body()[..6]);
            self.lock()
                .send_rarp(mac)
                .map_err(|e| ("uplink_error", format!("cannot announce the guest: {e}")))
        };
        self.ack(msg, res)
    }

    /// VHOST_USER_SET_LOG_FD (protocol feature LOG_SHMFD): one fd, no body.
    fn set_log_fd(&mut self, msg: &mut Message) -> Result<(), String> {
        let res = if !self
            .lock()
            .protocol_acked(VhostUserProtocolFeatures::LOG_SHMFD)
        {
            Err((
                "inactive_feature",
                "protocol feature LOG_SHMFD not acked".to_string(),
            ))
        } else if !msg.body().is_empty() || msg.fds.len() != 1 {
            Err((
                "invalid_message",
                "SET_LOG_FD carries one fd and no body".to_string(),
            ))
        } else {
            let file = msg.fds.remove(0);
            self.lock().set_log_fd(file);
            Ok(())
        };
        self.ack(msg, res)
    }

    fn handle(&mut self, msg: &mut Message) -> Result<(), String> {
        let request = msg.request();
        match request {
            REQ_SET_STATUS | REQ_GET_STATUS => return self.status(msg),
            REQ_SEND_RARP => return self.send_rarp(msg),
            REQ_SET_LOG_FD => return self.set_log_fd(msg),
            REQ_SET_VRING_ENABLE
                if msg.body().len() == 8 && !self.lock().protocol_features_acked() =>
            {
                return self.early_enable(msg)
            }
            _ => {}
        }
        match self.dispatch(msg)? {
            Ok(()) => Ok(()),
            Err(e) if is_fatal(&e) => {
                self.control.refused(request_name(request), reason(&e));
                Err(format!(
                    "request {} ({request}): {e}",
                    request_name(request)
                ))
            }
            Err(e) => {
                self.refused(request, reason(&e), &e);
                Ok(())
            }
        }
    }
}

/// Serve one connection until it ends. `stop` becomes readable on SIGINT/SIGTERM.
pub fn serve_connection(
    stream: UnixStream,
    backend: Arc<Mutex<NetBackend>>,
    control: &ControlMetrics,
    stop: &impl AsFd,
) -> ConnectionEnd {
    let setup = || -> io::Result<_> {
        let (inner, handler_side) = UnixStream::pair()?;
        inner.set_nonblocking(true)?;
        stream.set_write_timeout(Some(STALL_TIMEOUT))?;
        let handler = BackendReqHandler::from_stream(handler_side, Arc::clone(&backend));
        let handler_end = handler.try_clone_connection()?;
        Ok((inner, handler, handler_end))
    };
    let (inner, handler, handler_end) = match setup() {
        Ok(s) => s,
        Err(e) => {
            return ConnectionEnd::ProtocolError(format!("cannot set up the connection: {e}"))
        }
    };
    let mut conn = Conn {
        frontend: stream,
        handler,
        inner,
        handler_end,
        backend,
        control,
    };
    // A fault of an earlier connection's memory is not this one's.
    let _ = fault::take_pending();
    let mut requests = 0u64;
    loop {
        let mut others = vec![stop.as_fd()];
        others.extend(fault::notifier());
        let mut msg = match framing::read_message(&conn.frontend, &others) {
            Ok(Next::Message(m)) => m,
            Ok(Next::Closed) if requests == 0 => return ConnectionEnd::Probe,
            Ok(Next::Closed) => return ConnectionEnd::Disconnected,
            Ok(Next::Other(0)) => return ConnectionEnd::Stopped,
            Ok(Next::Other(_)) => {
                if fault::take_pending() {
                    control.memory_faults.inc();
                    return ConnectionEnd::MemoryFault;
                }
                continue;
            }
            Err(e) => {
                if let FramingError::Oversized { request, .. } = &e {
                    control.refused(request_name(*request), "oversized_message");
                }
                return ConnectionEnd::ProtocolError(e.to_string());
            }
        };
        if requests == 0 {
            log::info!("frontend connected");
            control.connections.inc();
        }
        requests = requests.saturating_add(1);
        control.requests.inc();
        if let Err(e) = conn.handle(&mut msg) {
            return ConnectionEnd::ProtocolError(e);
        }
    }
}
