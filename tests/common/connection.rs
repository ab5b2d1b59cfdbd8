// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The VMM's side of the vhost-user connection: the setup messages a guest's VMM sends,
//! through `vhost::vhost_user::Frontend`, plus raw messages where the `Frontend` API
//! refuses an order QEMU really sends (and for malformed ones).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MQ;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::guest::{bit, Guest};
use super::TIMEOUT;

/// vhost-user's PROTOCOL_FEATURES virtio feature bit.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// The vhost-user protocol features the daemon must offer.
pub fn wanted_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::STATUS
}

/// vhost-user request codes used in raw messages.
pub mod req {
    /// GET_FEATURES.
    pub const GET_FEATURES: u32 = 1;
    /// SET_FEATURES.
    pub const SET_FEATURES: u32 = 2;
    /// SET_VRING_NUM.
    pub const SET_VRING_NUM: u32 = 8;
    /// GET_QUEUE_NUM.
    pub const GET_QUEUE_NUM: u32 = 17;
    /// SET_VRING_BASE.
    pub const SET_VRING_BASE: u32 = 10;
    /// SET_VRING_ENABLE.
    pub const SET_VRING_ENABLE: u32 = 18;
}

/// Header flags: protocol version 1.
pub const HDR_VERSION: u32 = 0x1;
/// Header flags: this is a reply.
pub const HDR_REPLY: u32 = 0x4;
/// Header flags: the sender wants an ack (REPLY_ACK).
pub const HDR_NEED_REPLY: u32 = 0x8;

/// In which order the setup messages are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupOrder {
    /// Features, memory, rings, then SET_VRING_ENABLE(1) per ring (QEMU >= 8, DPDK).
    Standard,
    /// QEMU 7.2: SET_VRING_ENABLE(1) for every ring right after SET_PROTOCOL_FEATURES,
    /// before SET_FEATURES, without NEED_REPLY, never repeated. The `Frontend` refuses
    /// to send it then, so these are raw messages.
    Qemu72,
}

/// The vhost-user connection of a guest.
pub struct Connection {
    /// The `vhost` crate's frontend.
    pub fe: Frontend,
    /// The same socket, for raw messages.
    raw: UnixStream,
    /// Features the daemon offered.
    pub offered: u64,
    /// Protocol features the daemon offered.
    pub protocol_offered: VhostUserProtocolFeatures,
    /// Protocol features acked.
    pub protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM's answer (0 when MQ was not negotiated).
    pub queue_num: u64,
    /// GET_MAX_MEM_SLOTS's answer (0 without CONFIGURE_MEM_SLOTS).
    pub max_mem_slots: u64,
}

impl Connection {
    /// A connection over `stream` for `nrings` rings, nothing sent yet (socket
    /// timeouts set).
    pub fn open(stream: UnixStream, nrings: usize) -> Connection {
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("socket read timeout");
        stream
            .set_write_timeout(Some(TIMEOUT))
            .expect("socket write timeout");
        let raw = stream.try_clone().expect("clone the socket");
        Connection {
            fe: Frontend::from_stream(stream, u64::try_from(nrings).expect("fits")),
            raw,
            offered: 0,
            protocol_offered: VhostUserProtocolFeatures::empty(),
            protocol: VhostUserProtocolFeatures::empty(),
            queue_num: 0,
            max_mem_slots: 0,
        }
    }

    /// Run the whole setup of `guest` on a connected socket: features, memory table,
    /// every ring with SET_VRING_BASE = the used index in guest memory (as QEMU replays
    /// it), in `guest.cfg.order`.
    pub fn setup(guest: &mut Guest, stream: UnixStream) -> Connection {
        let mut conn = Connection::open(stream, guest.vrings());
        let ctx = guest.log().clone();
        let fail = |what: &str, e: &dyn std::fmt::Debug| -> ! {
            panic!("vhost-user setup: {what} failed: {e:?}{}", ctx.context())
        };
        conn.fe
            .set_owner()
            .unwrap_or_else(|e| fail("SET_OWNER", &e));
        conn.offered = conn
            .fe
            .get_features()
            .unwrap_or_else(|e| fail("GET_FEATURES", &e));
        let mut want = guest.cfg.features | bit(VHOST_USER_F_PROTOCOL_FEATURES);
        if guest.cfg.packed {
            want |= bit(super::guest::VIRTIO_F_RING_PACKED);
        }
        if guest.pairs.len() > 1 {
            want |= bit(VIRTIO_NET_F_MQ);
        }
        let missing = want & !conn.offered;
        assert_eq!(
            missing, 0,
            "daemon does not offer features {missing:#x} (offered {:#x})",
            conn.offered
        );
        conn.protocol_offered = conn
            .fe
            .get_protocol_features()
            .unwrap_or_else(|e| fail("GET_PROTOCOL_FEATURES", &e));
        conn.protocol = conn.protocol_offered & guest.cfg.protocol;
        conn.fe
            .set_protocol_features(conn.protocol)
            .unwrap_or_else(|e| fail("SET_PROTOCOL_FEATURES", &e));
        if guest.cfg.order == SetupOrder::Qemu72 {
            for i in 0..guest.vrings() {
                conn.raw_vring_enable(u32::try_from(i).expect("fits"), true);
            }
        }
        if conn.protocol.contains(VhostUserProtocolFeatures::MQ) {
            conn.queue_num = conn.request_u64(req::GET_QUEUE_NUM);
        }
        if conn
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
        {
            conn.max_mem_slots = conn
                .fe
                .get_max_mem_slots()
                .unwrap_or_else(|e| fail("GET_MAX_MEM_SLOTS", &e));
        }
        if conn.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every later message waits for the daemon's ack: when a call returns, the
            // daemon has applied it.
            conn.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        conn.fe
            .set_features(want)
            .unwrap_or_else(|e| fail("SET_FEATURES", &e));
        guest.acked = want;
        let regions = guest.region_infos();
        if guest.cfg.mem_via_add_reg {
            for r in &regions {
                conn.fe
                    .add_mem_region(r)
                    .unwrap_or_else(|e| fail("ADD_MEM_REG", &e));
            }
        } else {
            conn.fe
                .set_mem_table(&regions)
                .unwrap_or_else(|e| fail("SET_MEM_TABLE", &e));
        }
        let event_idx = guest.has(VIRTIO_RING_F_EVENT_IDX);
        for i in 0..guest.vrings() {
            let vq = guest.vq(i);
            let base = guest
                .vring_base_override
                .unwrap_or_else(|| vq.vring_base(&guest.mem));
            conn.fe
                .set_vring_num(i, vq.size())
                .unwrap_or_else(|e| fail("SET_VRING_NUM", &e));
            match u16::try_from(base) {
                Ok(base) => conn
                    .fe
                    .set_vring_base(i, base)
                    .unwrap_or_else(|e| fail("SET_VRING_BASE", &e)),
                // A packed ring's base has both halves; the `Frontend` sends 16 bits.
                Err(_) => conn.raw_vring_base(u32::try_from(i).expect("fits"), base),
            }
            conn.fe
                .set_vring_addr(i, &vq.config_data(&guest.mem))
                .unwrap_or_else(|e| fail("SET_VRING_ADDR", &e));
            conn.fe
                .set_vring_kick(i, &vq.kick)
                .unwrap_or_else(|e| fail("SET_VRING_KICK", &e));
            conn.fe
                .set_vring_call(i, &vq.call)
                .unwrap_or_else(|e| fail("SET_VRING_CALL", &e));
        }
        for p in &mut guest.pairs {
            p.rx.set_event_idx(event_idx);
            p.tx.set_event_idx(event_idx);
        }
        if guest.cfg.order == SetupOrder::Standard {
            for i in 0..guest.vrings() {
                conn.fe
                    .set_vring_enable(i, true)
                    .unwrap_or_else(|e| fail("SET_VRING_ENABLE", &e));
            }
        }
        conn
    }

    /// Write one raw message: header (`request`, `flags`, `size`) then `body`.
    pub fn send_raw(&mut self, request: u32, flags: u32, size: u32, body: &[u8]) {
        let mut msg = Vec::with_capacity(12 + body.len());
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&size.to_le_bytes());
        msg.extend_from_slice(body);
        self.raw
            .write_all(&msg)
            .expect("write a raw vhost-user message");
    }

    /// Read one raw reply: (request, flags, body).
    pub fn recv_raw(&mut self) -> (u32, u32, Vec<u8>) {
        let mut hdr = [0u8; 12];
        self.raw
            .read_exact(&mut hdr)
            .expect("read a vhost-user reply header");
        let u = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().expect("4 bytes"));
        let mut body = vec![0u8; usize::try_from(u(8)).expect("fits")];
        self.raw
            .read_exact(&mut body)
            .expect("read a vhost-user reply body");
        (u(0), u(4), body)
    }

    /// A request answered with a u64, sent raw (leaves the `Frontend`'s state alone).
    pub fn request_u64(&mut self, request: u32) -> u64 {
        self.send_raw(request, HDR_VERSION, 0, &[]);
        let (code, flags, body) = self.recv_raw();
        assert_eq!(code, request, "reply to the wrong request");
        assert!(flags & HDR_REPLY != 0, "reply without the reply flag");
        assert_eq!(body.len(), 8, "u64 reply of {} bytes", body.len());
        u64::from_le_bytes(body[..8].try_into().expect("8 bytes"))
    }

    /// SET_VRING_BASE as a raw message with all 32 bits of `num` (a packed ring's two
    /// positions), waiting for the ack when REPLY_ACK was negotiated.
    pub fn raw_vring_base(&mut self, index: u32, num: u32) {
        let mut body = Vec::new();
        body.extend_from_slice(&index.to_le_bytes());
        body.extend_from_slice(&num.to_le_bytes());
        let ack = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        let flags = HDR_VERSION | if ack { HDR_NEED_REPLY } else { 0 };
        self.send_raw(req::SET_VRING_BASE, flags, 8, &body);
        if ack {
            let (code, _, body) = self.recv_raw();
            assert_eq!(code, req::SET_VRING_BASE, "reply to the wrong request");
            assert_eq!(body, 0u64.to_le_bytes(), "SET_VRING_BASE {num:#x} refused");
        }
    }

    /// SET_VRING_ENABLE as a raw message without NEED_REPLY.
    pub fn raw_vring_enable(&mut self, index: u32, enable: bool) {
        let mut body = Vec::new();
        body.extend_from_slice(&index.to_le_bytes());
        body.extend_from_slice(&u32::from(enable).to_le_bytes());
        self.send_raw(req::SET_VRING_ENABLE, HDR_VERSION, 8, &body);
    }

    /// Whether the daemon closed the connection within `timeout`.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        self.raw
            .set_read_timeout(Some(timeout))
            .expect("socket timeout");
        let mut b = [0u8; 256];
        let deadline = Instant::now() + timeout;
        loop {
            match self.raw.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// The virtio-net config space (12 bytes: mac, status, max pairs, mtu).
    pub fn net_config(&mut self) -> Vec<u8> {
        let (_, payload) = self
            .fe
            .get_config(0, 12, VhostUserConfigFlags::WRITABLE, &[0u8; 12])
            .expect("GET_CONFIG");
        payload
    }
}
