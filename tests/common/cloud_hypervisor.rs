// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! cloud-hypervisor's way of driving a vhost-user-net backend, message for message: its
//! `virtio-devices/src/vhost_user/vu_common_ctrl.rs` and `net.rs` at [`CH_VERSION`],
//! through the same `vhost::vhost_user::Frontend` its VMM uses.
//!
//! - [`negotiate`] is `Net::new` -> `negotiate_features_vhost_user`: SET_OWNER,
//!   GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES (what both offer), every
//!   later message with NEED_REPLY once REPLY_ACK is acked, GET_QUEUE_NUM with MQ. No
//!   GET_MAX_MEM_SLOTS.
//! - [`activate`] is `activate` -> `setup_vhost_user`: SET_FEATURES (the guest's acks
//!   plus PROTOCOL_FEATURES, without MAC, STATUS and GUEST_ANNOUNCE, which
//!   cloud-hypervisor serves itself), SET_MEM_TABLE, SET_VRING_NUM for every ring
//!   first, then per ring SET_VRING_ADDR, SET_VRING_BASE (the avail index in guest
//!   memory), SET_VRING_CALL, SET_VRING_KICK, and SET_VRING_ENABLE(1) for every ring.
//! - [`reinitialize`] is the reconnect path (`reinitialize_vhost_user`, after the backend
//!   went away): SET_OWNER, GET_FEATURES, SET_PROTOCOL_FEATURES with the features acked
//!   the first time, then the same set-up as [`activate`].
//! - [`hotplug`] is memory hotplug with CONFIGURE_MEM_SLOTS: one ADD_MEM_REG.
//! - [`reset`] is `reset_vhost_user`: SET_VRING_ENABLE(0) and GET_VRING_BASE per ring.
//!
//! Its control queue: cloud-hypervisor keeps one for itself (and then offers the guest
//! STATUS and GUEST_ANNOUNCE) only when the backend offers CTRL_VQ; vhost-netmem does
//! not (QEMU serves its own), so the guest gets none and its rings are all the
//! backend's.

use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::connection::Connection;
use super::guest::{bit, Guest};

/// The cloud-hypervisor release whose sequence this is.
pub const CH_VERSION: &str = "v53.0";

/// virtio 1.1 bits cloud-hypervisor offers beside the net ones (`DEFAULT_VIRTIO_FEATURES`).
const VIRTIO_F_IN_ORDER: u32 = 35;
const VIRTIO_F_ORDER_PLATFORM: u32 = 36;
const VIRTIO_F_NOTIFICATION_DATA: u32 = 38;

/// What cloud-hypervisor's vhost-user-net device asks of a backend with checksum and
/// TSO offloads on and an MTU given (`Net::new`'s `avail_features`); MQ when the
/// device has more than one queue pair (`build_net_config_space`).
pub fn avail_features(pairs: usize) -> u64 {
    let mut f = bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CTRL_VQ)
        | bit(VIRTIO_NET_F_GUEST_ANNOUNCE)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_F_IN_ORDER)
        | bit(VIRTIO_F_ORDER_PLATFORM)
        | bit(VIRTIO_F_NOTIFICATION_DATA)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | VhostUserVirtioFeatures::LOG_ALL.bits()
        | bit(VIRTIO_NET_F_MTU)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_HOST_ECN)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_ECN)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_MAC);
    if pairs > 1 {
        f |= bit(VIRTIO_NET_F_MQ);
    }
    f
}

/// The protocol features cloud-hypervisor asks for.
pub fn avail_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::DEVICE_STATE
}

/// What cloud-hypervisor keeps about its backend between connections.
#[derive(Clone, Copy, Debug)]
pub struct ChDevice {
    /// Features both offer (`acked_features` of the negotiation).
    pub acked_features: u64,
    /// Protocol features both offer.
    pub acked_protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM's answer (2 without MQ).
    pub backend_queues: u64,
}

impl ChDevice {
    /// The features SET_FEATURES carries once the guest acked `guest_acks` of what it
    /// was offered (the negotiated features plus MAC).
    pub fn backend_features(&self, guest_acks: u64) -> u64 {
        let offered_to_guest = self.acked_features | bit(VIRTIO_NET_F_MAC);
        let frontend_only =
            bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_GUEST_ANNOUNCE);
        (VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | (guest_acks & offered_to_guest))
            & !frontend_only
    }
}

fn fail(guest: &Guest, what: &str, e: &dyn std::fmt::Debug) -> ! {
    panic!(
        "cloud-hypervisor {CH_VERSION} sequence: {what} failed: {e:?}{}",
        guest.log().context()
    )
}

/// The opening of every connection: SET_OWNER, GET_FEATURES.
fn open(guest: &Guest, stream: UnixStream) -> Connection {
    let mut conn = Connection::open(stream, guest.vrings());
    conn.fe
        .set_owner()
        .unwrap_or_else(|e| fail(guest, "SET_OWNER", &e));
    conn.offered = conn
        .fe
        .get_features()
        .unwrap_or_else(|e| fail(guest, "GET_FEATURES", &e));
    conn
}

/// `Net::new`: connect and negotiate on `stream`.
pub fn negotiate(guest: &Guest, stream: UnixStream) -> (Connection, ChDevice) {
    let mut conn = open(guest, stream);
    let acked_features = avail_features(guest.pairs.len()) & conn.offered;
    assert_ne!(
        acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        0,
        "the backend must offer PROTOCOL_FEATURES"
    );
    conn.protocol_offered = conn
        .fe
        .get_protocol_features()
        .unwrap_or_else(|e| fail(guest, "GET_PROTOCOL_FEATURES", &e));
    conn.protocol = avail_protocol() & conn.protocol_offered;
    conn.fe
        .set_protocol_features(conn.protocol)
        .unwrap_or_else(|e| fail(guest, "SET_PROTOCOL_FEATURES", &e));
    if conn.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        conn.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    let backend_queues = if conn.protocol.contains(VhostUserProtocolFeatures::MQ) {
        conn.fe
            .get_queue_num()
            .unwrap_or_else(|e| fail(guest, "GET_QUEUE_NUM", &e))
    } else {
        2
    };
    conn.queue_num = backend_queues;
    let dev = ChDevice {
        acked_features,
        acked_protocol: conn.protocol,
        backend_queues,
    };
    (conn, dev)
}

/// `activate` / `setup_vhost_user`: the guest acked `guest.cfg.features`; the rings
/// start at the avail index the guest published.
pub fn activate(conn: &mut Connection, guest: &mut Guest, dev: &ChDevice) {
    let nrings = guest.vrings();
    assert!(
        u64::try_from(nrings).expect("fits") <= dev.backend_queues,
        "cloud-hypervisor refuses more queues ({nrings}) than the backend has ({})",
        dev.backend_queues
    );
    let features = dev.backend_features(guest.cfg.features);
    conn.fe
        .set_features(features)
        .unwrap_or_else(|e| fail(guest, "SET_FEATURES", &e));
    guest.acked = features;
    conn.fe
        .set_mem_table(&guest.region_infos())
        .unwrap_or_else(|e| fail(guest, "SET_MEM_TABLE", &e));
    for i in 0..nrings {
        conn.fe
            .set_vring_num(i, guest.vq(i).ring.size())
            .unwrap_or_else(|e| fail(guest, "SET_VRING_NUM", &e));
    }
    for i in 0..nrings {
        let vq = guest.vq(i);
        conn.fe
            .set_vring_addr(i, &vq.ring.config_data(&guest.mem))
            .unwrap_or_else(|e| fail(guest, "SET_VRING_ADDR", &e));
        conn.fe
            .set_vring_base(i, vq.ring.avail_idx())
            .unwrap_or_else(|e| fail(guest, "SET_VRING_BASE", &e));
        conn.fe
            .set_vring_call(i, &vq.call)
            .unwrap_or_else(|e| fail(guest, "SET_VRING_CALL", &e));
        conn.fe
            .set_vring_kick(i, &vq.kick)
            .unwrap_or_else(|e| fail(guest, "SET_VRING_KICK", &e));
    }
    let event_idx = guest.has(VIRTIO_RING_F_EVENT_IDX);
    for p in &mut guest.pairs {
        p.rx.ring.set_event_idx(event_idx);
        p.tx.ring.set_event_idx(event_idx);
    }
    for i in 0..nrings {
        conn.fe
            .set_vring_enable(i, true)
            .unwrap_or_else(|e| fail(guest, "SET_VRING_ENABLE", &e));
    }
}

/// The reconnect path: a new connection to a backend that came back, set up with what
/// was negotiated the first time.
pub fn reinitialize(guest: &mut Guest, stream: UnixStream, dev: &ChDevice) -> Connection {
    let mut conn = open(guest, stream);
    conn.protocol = dev.acked_protocol;
    conn.fe
        .set_protocol_features(dev.acked_protocol)
        .unwrap_or_else(|e| fail(guest, "SET_PROTOCOL_FEATURES", &e));
    if dev
        .acked_protocol
        .contains(VhostUserProtocolFeatures::REPLY_ACK)
    {
        conn.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    activate(&mut conn, guest, dev);
    conn
}

/// Memory hotplug: region `region` of the guest's memory with ADD_MEM_REG.
pub fn hotplug(conn: &mut Connection, guest: &mut Guest, region: usize) {
    let info = guest.mem.region_info(region);
    conn.fe
        .add_mem_region(&info)
        .unwrap_or_else(|e| fail(guest, "ADD_MEM_REG", &e));
    guest.buf_regions.push(region);
}

/// `reset_vhost_user`: stop every ring; returns GET_VRING_BASE of each.
pub fn reset(conn: &mut Connection, guest: &Guest) -> Vec<u32> {
    (0..guest.vrings())
        .map(|i| {
            conn.fe
                .set_vring_enable(i, false)
                .unwrap_or_else(|e| fail(guest, "SET_VRING_ENABLE(0)", &e));
            conn.fe
                .get_vring_base(i)
                .unwrap_or_else(|e| fail(guest, "GET_VRING_BASE", &e))
        })
        .collect()
}
