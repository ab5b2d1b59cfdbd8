// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`XdpError`]: everything that can go wrong setting up the AF_XDP uplink, from the
//! interface name to the socket binds.

use std::io;

use super::prog::AttachMode;
use super::socket::BindMode;
use crate::netmem::PagePoolError;

/// Errors of the AF_XDP uplink.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The interface name cannot be one.
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no NUL, '/' or whitespace")]
    InvalidName(String),
    /// The interface does not exist (in this network namespace).
    #[error("no interface {iface:?}: {source}")]
    NoSuchInterface {
        /// Interface name.
        iface: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Zero queue pairs, or more than a queue id can name.
    #[error("invalid number of queue pairs {0}")]
    QueuePairs(usize),
    /// `BPF_MAP_CREATE` of the XSKMAP failed.
    #[error("cannot create the xskmap: {0}")]
    MapCreate(#[source] io::Error),
    /// `BPF_PROG_LOAD` failed; `log` is the verifier's log.
    #[error("cannot load the xdp program: {source}; verifier log:\n{log}")]
    ProgLoad {
        /// Cause.
        #[source]
        source: io::Error,
        /// The kernel verifier's log.
        log: String,
    },
    /// Attaching the program in the requested mode failed.
    #[error("cannot attach the xdp program to {iface} in {mode} mode: {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// Requested mode.
        mode: AttachMode,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Attaching the program failed in driver mode and in generic mode.
    #[error(
        "cannot attach the xdp program to {iface}: driver mode: {driver}; generic mode: {source}"
    )]
    AttachAny {
        /// Interface name.
        iface: String,
        /// Why driver mode failed.
        driver: io::Error,
        /// Why generic mode failed.
        #[source]
        source: io::Error,
    },
    /// `BPF_MAP_UPDATE_ELEM` of a socket failed.
    #[error("cannot put the socket of queue {queue} into the xskmap: {source}")]
    MapUpdate {
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Mapping the UMEM area or setting up its page pool failed.
    #[error("cannot allocate the umem of queue {queue}: {source}")]
    UmemAlloc {
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: PagePoolError,
    },
    /// Creating the AF_XDP socket or registering the UMEM failed.
    #[error("cannot register the umem of queue {queue}: {source}")]
    Umem {
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Creating the socket's rings (or querying the socket) failed.
    #[error("cannot set up the xdp socket of queue {queue}: {source}")]
    Socket {
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Registering the guest's memory as a UMEM (zero-copy TX) failed.
    #[error("cannot register guest memory as a umem for interface queue {queue}: {source}")]
    GuestUmem {
        /// Interface queue of the zero-copy TX socket.
        queue: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Zero-copy TX needs a second interface queue per queue pair.
    #[error("zero-copy tx on {iface} needs {need} tx queues (two per queue pair), it has {have}")]
    ZeroCopyTxQueues {
        /// Interface name.
        iface: String,
        /// Queues needed.
        need: u32,
        /// Queues the interface has.
        have: u32,
    },
    /// Binding the socket to the interface queue failed.
    #[error("cannot bind an xdp socket to {iface} queue {queue} in {mode} mode: {source}")]
    Bind {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
        /// Requested mode.
        mode: BindMode,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_lowercase_and_carry_the_source() {
        let e = XdpError::Bind {
            iface: "veth0".into(),
            queue: 1,
            mode: BindMode::ZeroCopy,
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        };
        let s = e.to_string();
        assert!(s.starts_with("cannot bind"), "{s}");
        assert!(s.contains("zero-copy") && s.contains("queue 1"), "{s}");
        assert!(s.contains(&io::Error::from_raw_os_error(libc::EOPNOTSUPP).to_string()));
    }
}
