// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Command line -> validated [`NetConfig`].

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};

use crate::api::ctl::CtlArgs;
use crate::api::listen::{ListenAddr, ListenAddrError};
use crate::launch::activation::ActivatedSocket;
use crate::ratelimit::{LimitConfig, LimitSpecError, PairLimits};
use crate::sandbox::SeccompMode;
use crate::uplink::tap::valid_ifname;

pub mod file;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad MAC address.
    #[error("invalid --mac {0:?}: expected six hex bytes like 52:54:00:12:34:56, unicast")]
    Mac(String),
    /// Bad TAP name.
    #[error("invalid --tap {0:?}: 1 to 15 characters, no '/' or whitespace")]
    TapName(String),
    /// Bad queue size.
    #[error("invalid --queue-size {0}: must be a power of two from 64 to 32768")]
    QueueSize(u32),
    /// Bad queue count.
    #[error("invalid --queues {0}: must be 1 to {max}", max = MAX_QUEUE_PAIRS)]
    Queues(u32),
    /// Bad MTU.
    #[error("invalid --mtu {0}: must be 68 to 65535")]
    Mtu(u32),
    /// A generator frame length out of range.
    #[error("invalid --generator-size {0}: must be 60 up to the MTU plus 14 ({1})")]
    GeneratorSize(u32, u32),
    /// Bad AF_XDP interface name.
    #[error("invalid --xdp {0:?}: an interface name of 1 to 15 characters")]
    XdpName(String),
    /// Conflicting uplinks.
    #[error("choose one uplink: --tap, --tap-fd, --uplink or --xdp")]
    UplinkConflict,
    /// Zero-copy TX is an AF_XDP option.
    #[error("--xdp-zerocopy-tx needs --xdp")]
    ZeroCopyTxWithoutXdp,
    /// The MTU does not fit an AF_XDP UMEM frame.
    #[error(
        "invalid --mtu {0} with --xdp: at most {max} (a frame must fit a {frame}-byte UMEM frame less the {headroom}-byte XDP headroom)",
        max = XDP_MAX_MTU,
        frame = crate::uplink::xdp::UMEM_FRAME_SIZE,
        headroom = XDP_HEADROOM
    )]
    XdpMtu(u32),
    /// No vhost-user socket given.
    #[error("no vhost-user socket: give --socket PATH (or --socket-path PATH), --fd N, or start the backend by systemd socket activation (LISTEN_FDS)")]
    NoSocket,
    /// The TAP fds do not match the queue pairs.
    #[error("--tap-fd given {given} time(s) for --queues {queues}: pass one fd per queue pair")]
    TapFdCount {
        /// `--tap-fd` count.
        given: usize,
        /// `--queues`.
        queues: u32,
    },
    /// The same fd number given twice.
    #[error("file descriptor {0} is given twice (--fd, --tap-fd or socket activation)")]
    FdTwice(RawFd),
    /// `--group` without `--user`.
    #[error("--group needs --user")]
    GroupWithoutUser,
    /// Bad guest memory ceiling.
    #[error("invalid --max-guest-memory {0:?}: a size like 64G, 512M or 1T, at least 1M")]
    MaxGuestMemory(String),
    /// Bad rate limit.
    #[error("invalid --{option} {value:?}: {source}")]
    RateLimit {
        /// `tx-rate-limit` or `rx-rate-limit`.
        option: &'static str,
        /// What was given.
        value: String,
        /// What is wrong with it.
        source: LimitSpecError,
    },
    /// Bad `--metrics` address.
    #[error("{0}")]
    Metrics(#[from] ListenAddrError),
    /// `--api-socket` and `--metrics unix:` name the same path.
    #[error("--api-socket and --metrics name the same socket {0}")]
    SameSocket(PathBuf),
}

/// Headroom the kernel keeps in front of each AF_XDP frame (XDP_PACKET_HEADROOM).
pub const XDP_HEADROOM: u32 = 256;

/// Largest MTU the AF_XDP uplink carries: an Ethernet frame (14-byte header) must fit
/// one UMEM frame less the XDP headroom (no multi-buffer AF_XDP).
pub const XDP_MAX_MTU: u32 = crate::uplink::xdp::UMEM_FRAME_SIZE - XDP_HEADROOM - 14;

/// Default `--max-guest-memory`.
pub const MAX_GUEST_MEMORY_DEFAULT: &str = "1T";

/// Parse a size: a number with an optional binary suffix K, M, G or T.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last()? {
        (i, 'k' | 'K') => (&t[..i], 10),
        (i, 'm' | 'M') => (&t[..i], 20),
        (i, 'g' | 'G') => (&t[..i], 30),
        (i, 't' | 'T') => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1u64.checked_shl(shift)?)
}

/// Largest number of queue pairs.
pub const MAX_QUEUE_PAIRS: u32 = 16;

/// Default `--tx-holdoff` (microseconds): the ceiling of the adaptive holdoff.
pub const TX_HOLDOFF_DEFAULT_US: u32 = 1000;

/// Test and benchmark uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TestUplinkArg {
    /// Discard every transmitted packet; receive nothing.
    Null,
    /// Reflect every transmitted packet back to the guest on the same queue pair.
    Loopback,
    /// Receive a fixed UDP frame (--generator-size bytes) whenever the guest has a
    /// buffer; discard every transmitted packet (DPDK testpmd's txonly, seen from the
    /// guest's RX ring).
    Generator,
}

/// vhost-user-net backend: moves a VM's virtio-net traffic between a vhost-user socket
/// and a TAP device (or a test uplink), with netmem-style memory handling.
///
/// The vhost-user socket is a path (--socket), a file descriptor (--fd), or the
/// socket systemd passes by socket activation (LISTEN_FDS, no socket option).
///
/// Examples:
///   vhost-netmem --socket /tmp/vnm.sock                 (listen; create a tap vnmN)
///   vhost-netmem --socket /tmp/vnm.sock --tap tap0 --queues 2
///   vhost-netmem --socket /tmp/qemu.sock --client       (QEMU -chardev ...,server=on)
///   vhost-netmem --fd 3 --tap-fd 4 --mac 52:54:00:12:34:56
///                                   (socket and TAP passed as fds: no privilege needed)
///   vhost-netmem --socket /run/vnm.sock --tap tap0 --user vhost-netmem
///                                   (as root: open the TAP, then become vhost-netmem)
///   vhost-netmem --socket /tmp/vnm.sock --metrics 127.0.0.1:9464 --api-socket /tmp/vnm.api
///   vhost-netmem ctl --api-socket /tmp/vnm.api stats
///                                   (ask a running backend; see `vhost-netmem ctl --help`)
#[derive(Debug, Parser)]
#[command(
    name = "vhost-netmem",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A client command for a running backend instead of running one.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// vhost-user socket path (alias --socket-path, QEMU's name). By default the
    /// backend listens on it (QEMU's default, cloud-hypervisor's vhost_mode=client).
    #[arg(
        long,
        visible_alias = "socket-path",
        value_name = "PATH",
        conflicts_with = "fd"
    )]
    pub socket: Option<PathBuf>,

    /// Serve the vhost-user socket open as file descriptor FDNUM, inherited from the
    /// caller: a listening UNIX socket (frontends are accepted one after another) or
    /// one already connected to the frontend (served once, then the backend exits).
    #[arg(long, value_name = "FDNUM")]
    pub fd: Option<RawFd>,

    /// Connect to --socket instead of listening (QEMU server=on, cloud-hypervisor
    /// vhost_mode=server), retrying with backoff until the VMM listens.
    #[arg(long, conflicts_with = "fd")]
    pub client: bool,

    /// TAP opened by the caller, as QEMU's -netdev tap,fd= and libvirt pass it: one
    /// inherited fd per queue pair (repeat the option; multi_queue for more than one),
    /// opened with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR. The backend sets the vnet
    /// header size and the offloads and needs no privilege for it.
    #[arg(long, value_name = "FD", action = ArgAction::Append)]
    pub tap_fd: Vec<RawFd>,

    /// TAP interface to use, created if missing. Without any uplink option a TAP is
    /// created from the pattern vnm%d and its name logged.
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,

    /// AF_XDP uplink on interface IFACE instead of a TAP: per queue pair, XDP sockets
    /// bound to queue id = pair index (zero-copy when the driver can, else copy mode).
    /// Segmentation and receive-checksum offloads are not offered to the guest.
    #[arg(long, value_name = "IFACE")]
    pub xdp: Option<String>,

    /// With --xdp: transmit guest packets straight from guest memory, registered as a
    /// second UMEM per queue pair on interface queue (queues + pair); the interface
    /// needs twice as many TX queues as queue pairs. The kernel pins all guest memory.
    #[arg(long)]
    pub xdp_zerocopy_tx: bool,

    /// Test/benchmark uplink instead of a TAP.
    #[arg(long, value_enum, value_name = "KIND")]
    pub uplink: Option<TestUplinkArg>,

    /// With --uplink generator: the length of each generated frame, Ethernet header to
    /// payload end (no FCS), 60 up to the MTU plus 14.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub generator_size: u32,

    /// Queue pairs offered to the guest (one worker thread each).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub queues: u32,

    /// Largest ring size accepted per virtqueue.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue_size: u32,

    /// Guest MAC address (default: a locally administered address derived from the
    /// socket path, stable across restarts; with --fd or socket activation there is no
    /// path to derive it from: give --mac).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,

    /// MTU offered to the guest.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,

    /// Exit when the first frontend disconnects (default: keep the TAP and serve the
    /// next connection).
    #[arg(long)]
    pub once: bool,

    /// Busy-poll the rings and the uplink for up to USECS microseconds after the last
    /// packet before sleeping (lower latency and higher packet rates for a whole
    /// core per queue pair). 0 (default) sleeps at once.
    #[arg(long, default_value_t = 0, value_name = "USECS")]
    pub busy_poll: u32,

    /// While the guest sends a stream (a TX look moved two chains or more, or a packet
    /// of 1 KiB or more), keep it from kicking for a while and look at its TX ring
    /// again by timer; kicks come back on once a look finds nothing or a single small
    /// packet. Every kick costs the guest a VM exit: a streaming guest then notifies
    /// once per quiet spell instead of once per packet, while sparse and
    /// request/response traffic is never held. The while adapts up to USECS: a run
    /// starts at USECS/8 and doubles while the timer's looks find the stream again,
    /// halves when it pauses, and is quartered when the ring filled up meanwhile.
    /// 0 turns it off (kicks back on after every batch).
    #[arg(long, default_value_t = TX_HOLDOFF_DEFAULT_US, value_name = "USECS")]
    pub tx_holdoff: u32,

    /// Write per-queue counters as JSON to this file every 0.5 s and at exit. The
    /// directory must exist and be writable: the file is written once at start-up.
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,

    /// Largest total guest memory a frontend may hand over (all regions together), a
    /// size with a K, M, G or T suffix. Larger memory tables are refused.
    #[arg(long, default_value = MAX_GUEST_MEMORY_DEFAULT, value_name = "SIZE")]
    pub max_guest_memory: String,

    /// Once the uplink is set up (TAP opened, AF_XDP sockets bound), become USER (a
    /// name or a uid) and drop every capability the uplink no longer needs: all of
    /// them for a TAP; AF_XDP keeps CAP_NET_RAW and CAP_IPC_LOCK. The --socket path
    /// is bound afterwards, as USER.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// With --user: the group to become (default: USER's primary group).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Print the backend's capabilities as JSON (QEMU's vhost-user backend
    /// conventions: {"type": "net"}) and exit; other options are ignored.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Read options from this TOML file first: each key is a long option's name
    /// (`queues = 2`, `once = true`, `tap-fd = [3, 4]`); options given on the command
    /// line override the file's.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// seccomp filter per thread (control loop, queue workers, stats writer, API
    /// server): what a syscall outside the thread's allowlist gets.
    #[arg(long, value_enum, default_value_t = SeccompMode::Kill, value_name = "MODE")]
    pub seccomp: SeccompMode,

    /// Rate limit of every queue pair's TX (guest to uplink), token buckets with
    /// Firecracker's semantics: bandwidth=SIZE/REFILL_MS[+BURST] allows SIZE bytes
    /// every REFILL_MS milliseconds (plus BURST bytes once), ops=SIZE/REFILL_MS[+BURST]
    /// as many packets; either or both, comma-separated; none for no limit (default).
    /// A throttled TX leaves packets on the guest's ring: nothing is dropped.
    /// Example, 200 Mbit/s: --tx-rate-limit bandwidth=2500000/100
    #[arg(long, value_name = "LIMIT")]
    pub tx_rate_limit: Option<String>,

    /// Rate limit of every queue pair's RX (uplink to guest), as --tx-rate-limit; a
    /// throttled RX leaves packets in the uplink's queue.
    /// Example, 10 kpps with a burst of 5000: --rx-rate-limit ops=1000/100+5000
    #[arg(long, value_name = "LIMIT")]
    pub rx_rate_limit: Option<String>,

    /// Serve the counters in Prometheus' text format (GET /metrics) on ADDR:
    /// `127.0.0.1:PORT` or `[::1]:PORT` (only loopback addresses are served: put a
    /// proxy in front for remote scrapes), or `unix:PATH`. An address in use stops the start.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Serve the HTTP/1.1 control API on a unix socket at PATH: GET /stats,
    /// GET /metrics, GET /config, GET and PUT /queues/PAIR/rate-limit. The client is
    /// `vhost-netmem ctl --api-socket PATH ...`.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

/// `--{option} value`, parsed (no option: no limit).
fn rate_limit(option: &'static str, value: Option<&str>) -> Result<LimitConfig, ConfigError> {
    let Some(value) = value else {
        return Ok(LimitConfig::default());
    };
    LimitConfig::parse(value).map_err(|source| ConfigError::RateLimit {
        option,
        value: value.to_string(),
        source,
    })
}

/// Client commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Talk to a running backend over its --api-socket.
    Ctl(CtlArgs),
}

impl Cli {
    /// Whether the command line names the vhost-user socket (otherwise systemd socket
    /// activation may pass it).
    pub fn has_socket_option(&self) -> bool {
        self.socket.is_some() || self.fd.is_some()
    }
}

/// Where the vhost-user socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketConfig {
    /// Bind and listen on this path.
    Listen(PathBuf),
    /// Connect to this path (`--client`).
    Connect(PathBuf),
    /// Open as this fd, passed by the caller (`--fd`).
    Fd(RawFd),
    /// Passed by systemd socket activation.
    Activated(ActivatedSocket),
}

impl SocketConfig {
    /// How to name it in logs and errors.
    pub fn describe(&self) -> String {
        match self {
            SocketConfig::Listen(p) | SocketConfig::Connect(p) => p.display().to_string(),
            SocketConfig::Fd(fd) => format!("--fd {fd}"),
            SocketConfig::Activated(a) => match &a.name {
                Some(n) => format!("socket-activated fd {} ({n})", a.fd),
                None => format!("socket-activated fd {}", a.fd),
            },
        }
    }

    /// The seed of the derived MAC: the path, or what names the passed socket.
    fn mac_seed(&self) -> Vec<u8> {
        match self {
            SocketConfig::Listen(p) | SocketConfig::Connect(p) => {
                p.as_os_str().as_encoded_bytes().to_vec()
            }
            other => other.describe().into_bytes(),
        }
    }
}

/// Which uplink to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkConfig {
    /// A TAP by name or `%d` pattern.
    Tap(String),
    /// A TAP opened by the caller: one fd per queue pair.
    TapFds(Vec<RawFd>),
    /// A test uplink.
    Test(TestUplinkArg),
    /// AF_XDP on an interface.
    Xdp(String),
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The vhost-user socket.
    pub socket: SocketConfig,
    /// Uplink.
    pub uplink: UplinkConfig,
    /// Queue pairs.
    pub queue_pairs: u16,
    /// Maximum ring size.
    pub queue_size: u16,
    /// Guest MAC.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u16,
    /// Exit after the first connection.
    pub once: bool,
    /// Counter file.
    pub stats_file: Option<PathBuf>,
    /// Busy-poll budget after the last packet (None: off).
    pub busy_poll: Option<std::time::Duration>,
    /// Guest TX kicks stay off this long after a TX batch (None: off).
    pub tx_holdoff: Option<std::time::Duration>,
    /// AF_XDP zero-copy TX from guest memory.
    pub xdp_zerocopy_tx: bool,
    /// Frame length of the generator test uplink.
    pub generator_size: usize,
    /// Ceiling on the total guest memory of a connection, in bytes.
    pub max_guest_memory: u64,
    /// `--user` and `--group`, resolved when the daemon starts.
    pub user: Option<(String, Option<String>)>,
    /// seccomp mode for every thread's filter.
    pub seccomp: SeccompMode,
    /// Every queue pair's rate limits at start-up.
    pub rate_limits: PairLimits,
    /// Where the Prometheus exposition is served (`--metrics`).
    pub metrics: Option<ListenAddr>,
    /// The API socket path (`--api-socket`).
    pub api_socket: Option<PathBuf>,
}

/// `--generator-size` checked against the MTU.
fn generator_size(size: u32, mtu: u32) -> Result<usize, ConfigError> {
    let max = mtu.saturating_add(14);
    let min = u32::try_from(crate::uplink::generator::MIN_FRAME).unwrap_or(60);
    if size < min || size > max {
        return Err(ConfigError::GeneratorSize(size, max));
    }
    usize::try_from(size).map_err(|_| ConfigError::GeneratorSize(size, max))
}

/// `mac` as text, `52:54:00:12:34:56`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff` (unicast only).
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let err = || ConfigError::Mac(s.to_string());
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(err());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(err());
    }
    Ok(mac)
}

/// A locally administered unicast MAC derived from `seed` (FNV-1a).
pub fn derived_mac(seed: &[u8]) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in seed {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

impl NetConfig {
    /// Validate a parsed command line (no socket activation).
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        Self::from_cli_with(cli, None)
    }

    /// Validate a parsed command line; `activated` is the socket systemd passed, used
    /// when the command line names none.
    pub fn from_cli_with(
        cli: Cli,
        activated: Option<ActivatedSocket>,
    ) -> Result<Self, ConfigError> {
        let socket = match (cli.socket, cli.fd, activated) {
            (Some(p), _, _) if cli.client => SocketConfig::Connect(p),
            (Some(p), _, _) => SocketConfig::Listen(p),
            (None, Some(fd), _) => SocketConfig::Fd(fd),
            (None, None, Some(a)) => SocketConfig::Activated(a),
            (None, None, None) => return Err(ConfigError::NoSocket),
        };
        let socket_fd = match &socket {
            SocketConfig::Fd(fd) => Some(*fd),
            SocketConfig::Activated(a) => Some(a.fd),
            _ => None,
        };
        let mut seen: Vec<RawFd> = socket_fd.into_iter().collect();
        for fd in &cli.tap_fd {
            if seen.contains(fd) {
                return Err(ConfigError::FdTwice(*fd));
            }
            seen.push(*fd);
        }
        let tap_fds = (!cli.tap_fd.is_empty()).then_some(cli.tap_fd);
        let uplink = match (cli.tap, cli.uplink, cli.xdp, tap_fds) {
            (None, None, None, Some(fds)) => {
                if u32::try_from(fds.len()).ok() != Some(cli.queues) {
                    return Err(ConfigError::TapFdCount {
                        given: fds.len(),
                        queues: cli.queues,
                    });
                }
                UplinkConfig::TapFds(fds)
            }
            (Some(t), None, None, None) => {
                if !valid_ifname(&t) {
                    return Err(ConfigError::TapName(t));
                }
                UplinkConfig::Tap(t)
            }
            (None, Some(k), None, None) => UplinkConfig::Test(k),
            (None, None, Some(i), None) => {
                if !valid_ifname(&i) || i.contains('%') {
                    return Err(ConfigError::XdpName(i));
                }
                UplinkConfig::Xdp(i)
            }
            (None, None, None, None) => UplinkConfig::Tap("vnm%d".into()),
            _ => return Err(ConfigError::UplinkConflict),
        };
        if cli.xdp_zerocopy_tx && !matches!(uplink, UplinkConfig::Xdp(_)) {
            return Err(ConfigError::ZeroCopyTxWithoutXdp);
        }
        if !(1..=MAX_QUEUE_PAIRS).contains(&cli.queues) {
            return Err(ConfigError::Queues(cli.queues));
        }
        if !(64..=32768).contains(&cli.queue_size) || !cli.queue_size.is_power_of_two() {
            return Err(ConfigError::QueueSize(cli.queue_size));
        }
        let mtu = u16::try_from(cli.mtu)
            .ok()
            .filter(|m| *m >= 68)
            .ok_or(ConfigError::Mtu(cli.mtu))?;
        if matches!(uplink, UplinkConfig::Xdp(_)) && u32::from(mtu) > XDP_MAX_MTU {
            return Err(ConfigError::XdpMtu(cli.mtu));
        }
        let max_guest_memory = parse_size(&cli.max_guest_memory)
            .filter(|n| *n >= 1 << 20)
            .ok_or_else(|| ConfigError::MaxGuestMemory(cli.max_guest_memory.clone()))?;
        let mac = match cli.mac {
            Some(m) => parse_mac(&m)?,
            None => derived_mac(&socket.mac_seed()),
        };
        let user = match (cli.user, cli.group) {
            (Some(u), g) => Some((u, g)),
            (None, Some(_)) => return Err(ConfigError::GroupWithoutUser),
            (None, None) => None,
        };
        let rate_limits = PairLimits {
            tx: rate_limit("tx-rate-limit", cli.tx_rate_limit.as_deref())?,
            rx: rate_limit("rx-rate-limit", cli.rx_rate_limit.as_deref())?,
        };
        let metrics = cli
            .metrics
            .as_deref()
            .map(ListenAddr::parse_metrics)
            .transpose()?;
        if let (Some(ListenAddr::Unix(m)), Some(a)) = (&metrics, &cli.api_socket) {
            if m == a {
                return Err(ConfigError::SameSocket(a.clone()));
            }
        }
        Ok(NetConfig {
            socket,
            uplink,
            queue_pairs: u16::try_from(cli.queues).map_err(|_| ConfigError::Queues(cli.queues))?,
            queue_size: u16::try_from(cli.queue_size)
                .map_err(|_| ConfigError::QueueSize(cli.queue_size))?,
            mac,
            mtu,
            once: cli.once,
            stats_file: cli.stats_file,
            busy_poll: (cli.busy_poll > 0)
                .then(|| std::time::Duration::from_micros(u64::from(cli.busy_poll))),
            tx_holdoff: (cli.tx_holdoff > 0)
                .then(|| std::time::Duration::from_micros(u64::from(cli.tx_holdoff))),
            xdp_zerocopy_tx: cli.xdp_zerocopy_tx,
            generator_size: generator_size(cli.generator_size, cli.mtu)?,
            max_guest_memory,
            user,
            seccomp: cli.seccomp,
            rate_limits,
            metrics,
            api_socket: cli.api_socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NetConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("vhost-netmem").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        NetConfig::from_cli(cli).map_err(|e| e.to_string())
    }

    #[test]
    fn rate_limits_set_every_pair_and_bad_ones_name_their_option() {
        let c = parse(&["--socket", "/tmp/s"]).unwrap();
        assert_eq!(c.rate_limits, PairLimits::default());
        let c = parse(&[
            "--socket",
            "/tmp/s",
            "--tx-rate-limit",
            "bandwidth=2500000/100",
            "--rx-rate-limit",
            "ops=1000/100+5000",
        ])
        .unwrap();
        assert_eq!(c.rate_limits.tx.bandwidth.map(|b| b.size), Some(2_500_000));
        assert_eq!(c.rate_limits.tx.ops, None);
        assert_eq!(c.rate_limits.rx.ops.map(|b| b.one_time_burst), Some(5000));
        let e = parse(&["--socket", "/tmp/s", "--rx-rate-limit", "ops=-1/100"]).unwrap_err();
        assert!(
            e.contains("--rx-rate-limit") && e.contains("SIZE/REFILL_MS"),
            "{e}"
        );
    }

    #[test]
    fn defaults() {
        let c = parse(&["--socket", "/tmp/s"]).unwrap();
        assert_eq!(c.uplink, UplinkConfig::Tap("vnm%d".into()));
        assert_eq!((c.queue_pairs, c.queue_size, c.mtu), (1, 256, 1500));
        assert_eq!(c.mac[0], 0x02);
        assert_eq!(c.mac, parse(&["--socket", "/tmp/s"]).unwrap().mac);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--socket", "/s", "--queue-size", "100"])
            .unwrap_err()
            .contains("power of two"));
        assert!(parse(&["--socket", "/s", "--queues", "0"])
            .unwrap_err()
            .contains("--queues"));
        assert!(parse(&["--socket", "/s", "--mtu", "70000"])
            .unwrap_err()
            .contains("--mtu"));
        assert!(parse(&["--socket", "/s", "--mac", "01:00:00:00:00:01"])
            .unwrap_err()
            .contains("unicast"));
        assert!(parse(&["--socket", "/s", "--tap", "a", "--uplink", "null"])
            .unwrap_err()
            .contains("one uplink"));
        assert!(parse(&["--socket", "/s", "--tap", "x/y"])
            .unwrap_err()
            .contains("--tap"));
        assert!(parse(&["--socket", "/s", "--tap", "a", "--xdp", "b"])
            .unwrap_err()
            .contains("one uplink"));
        assert!(parse(&["--socket", "/s", "--xdp", "e%d"])
            .unwrap_err()
            .contains("--xdp"));
        assert_eq!(
            parse(&["--socket", "/s", "--xdp", "veth0"]).unwrap().uplink,
            UplinkConfig::Xdp("veth0".into())
        );
        assert!(
            parse(&["--socket", "/s", "--xdp", "veth0", "--xdp-zerocopy-tx"])
                .unwrap()
                .xdp_zerocopy_tx
        );
        assert!(
            parse(&["--socket", "/s", "--tap", "a", "--xdp-zerocopy-tx"])
                .unwrap_err()
                .contains("needs --xdp")
        );
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn xdp_mtu_must_fit_a_umem_frame() {
        let ok = XDP_MAX_MTU.to_string();
        assert!(parse(&["--socket", "/s", "--xdp", "veth0", "--mtu", &ok]).is_ok());
        let big = (XDP_MAX_MTU + 1).to_string();
        let e = parse(&["--socket", "/s", "--xdp", "veth0", "--mtu", &big]).unwrap_err();
        assert!(e.contains("--mtu") && e.contains("--xdp"), "{e}");
        assert!(parse(&["--socket", "/s", "--tap", "t0", "--mtu", "9000"]).is_ok());
    }

    #[test]
    fn guest_memory_ceiling_parses() {
        assert_eq!(
            parse(&["--socket", "/s"]).unwrap().max_guest_memory,
            1 << 40
        );
        let c = parse(&["--socket", "/s", "--max-guest-memory", "512M"]).unwrap();
        assert_eq!(c.max_guest_memory, 512 << 20);
        for bad in ["0", "12X", "", "99999999999T", "1K"] {
            assert!(
                parse(&["--socket", "/s", "--max-guest-memory", bad])
                    .unwrap_err()
                    .contains("--max-guest-memory"),
                "{bad}"
            );
        }
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2g"), Some(2 << 30));
    }

    #[test]
    fn the_socket_is_a_path_an_fd_or_activated() {
        assert_eq!(
            parse(&["--socket-path", "/s"]).unwrap().socket,
            SocketConfig::Listen("/s".into())
        );
        assert_eq!(
            parse(&["--socket", "/s", "--client"]).unwrap().socket,
            SocketConfig::Connect("/s".into())
        );
        assert_eq!(parse(&["--fd", "3"]).unwrap().socket, SocketConfig::Fd(3));
        assert!(parse(&["--fd", "3", "--socket", "/s"]).is_err());
        assert!(parse(&["--fd", "3", "--client"]).is_err());
        assert!(parse(&["--uplink", "null"])
            .unwrap_err()
            .contains("socket activation"));
        let cli = Cli::try_parse_from(["vnm", "--uplink", "null"]).unwrap();
        let a = ActivatedSocket {
            fd: 3,
            name: Some("vhost-user".into()),
        };
        let c = NetConfig::from_cli_with(cli, Some(a.clone())).unwrap();
        assert_eq!(c.socket, SocketConfig::Activated(a));
    }

    #[test]
    fn tap_fds_match_the_queue_pairs() {
        assert_eq!(
            parse(&["--fd", "3", "--tap-fd", "4", "--tap-fd", "5", "--queues", "2"])
                .unwrap()
                .uplink,
            UplinkConfig::TapFds(vec![4, 5])
        );
        assert!(parse(&["--fd", "3", "--tap-fd", "4", "--queues", "2"])
            .unwrap_err()
            .contains("one fd per queue pair"));
        assert!(parse(&["--fd", "3", "--tap-fd", "3"])
            .unwrap_err()
            .contains("given twice"));
        assert!(parse(&["--fd", "3", "--tap-fd", "4", "--tap", "t0"])
            .unwrap_err()
            .contains("one uplink"));
    }

    #[test]
    fn group_needs_a_user() {
        assert!(parse(&["--socket", "/s", "--group", "g"])
            .unwrap_err()
            .contains("--group needs --user"));
        assert_eq!(
            parse(&["--socket", "/s", "--user", "nobody"]).unwrap().user,
            Some(("nobody".into(), None))
        );
    }

    #[test]
    fn metrics_and_api_socket_options() {
        let c = parse(&[
            "--socket",
            "/s",
            "--metrics",
            "127.0.0.1:9464",
            "--api-socket",
            "/a",
        ])
        .unwrap();
        assert_eq!(
            c.metrics,
            Some(ListenAddr::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(c.api_socket, Some(PathBuf::from("/a")));
        let e = parse(&["--socket", "/s", "--metrics", "0.0.0.0:9464"]).unwrap_err();
        assert!(e.contains("only loopback"), "{e}");
        let e = parse(&[
            "--socket",
            "/s",
            "--metrics",
            "unix:/a",
            "--api-socket",
            "/a",
        ])
        .unwrap_err();
        assert!(e.contains("same socket"), "{e}");
        // The subcommand does not take the daemon's options, nor they it.
        assert!(Cli::try_parse_from([
            "vnm",
            "--socket",
            "/s",
            "ctl",
            "--api-socket",
            "/a",
            "stats"
        ])
        .is_err());
        let cli = Cli::try_parse_from(["vnm", "ctl", "--api-socket", "/a", "stats"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Ctl(_))));
    }

    #[test]
    fn mac_parses() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56").unwrap(),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        );
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_mac("zz:54:00:12:34:56").is_err());
    }
}
