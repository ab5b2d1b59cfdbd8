// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Control-plane state of one virtqueue, as set by the frontend.

use vmm_sys_util::eventfd::EventFd;

/// What the frontend told us about one ring.
#[derive(Debug, Default)]
pub struct VringConfig {
    /// SET_VRING_NUM.
    pub size: u16,
    /// SET_VRING_ADDR, translated to guest-physical (desc, avail, used).
    pub addrs: Option<(u64, u64, u64)>,
    /// SET_VRING_ADDR's `log_guest_addr`, when its flags carry VHOST_VRING_F_LOG: the
    /// guest-physical address of the used ring for the dirty log.
    pub log_addr: Option<u64>,
    /// Next avail index (SET_VRING_BASE, or where a stopped worker left off); a
    /// packed ring's position with the driver's wrap counter in bit 15.
    pub next_avail: u16,
    /// Next used index: where a stopped worker left off. A split ring's is None
    /// after SET_VRING_BASE, which names the avail side only: the used index in guest
    /// memory (what the device last published) is read when the ring starts. A packed
    /// ring's SET_VRING_BASE names both positions (the device's wrap counter in bit
    /// 15 here), as there is no used index in guest memory to read.
    pub next_used: Option<u16>,
    /// A packed ring's positions are the frontend's SET_VRING_BASE (not a stopped
    /// worker's): checked against the ring in guest memory when it starts.
    pub base_from_frontend: bool,
    /// SET_VRING_KICK; cleared by GET_VRING_BASE (the ring is stopped).
    pub kick: Option<EventFd>,
    /// SET_VRING_CALL.
    pub call: Option<EventFd>,
    /// SET_VRING_ENABLE.
    pub enabled: bool,
}

impl VringConfig {
    /// Whether the ring can run: sized, addressed, kicked and enabled (rings count as
    /// enabled when VHOST_USER_F_PROTOCOL_FEATURES was not negotiated).
    pub fn is_active(&self, protocol_features: bool) -> bool {
        self.size != 0
            && self.addrs.is_some()
            && self.kick.is_some()
            && (self.enabled || !protocol_features)
    }
}
