// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The daemon: build the uplink, then listen (or connect) and serve one vhost-user
//! connection after another until a signal, or after the first with `--once`.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::listen::ListenError;
use crate::api::routes::ApiState;
use crate::api::ApiThread;
use crate::config::{NetConfig, SocketConfig, TestUplinkArg, UplinkConfig};
use crate::launch::fds::{PassedFdError, PassedSocket};
use crate::launch::privilege::{self, PrivilegeError, Retained};
use crate::metrics::DeviceMetrics;
use crate::ratelimit::RateLimits;
use crate::uplink::generator::Generator;
use crate::uplink::null::{TestUplink, TestUplinkKind};
use crate::uplink::tap::Tap;
use crate::uplink::xdp::{Xdp, XdpOptions};
use crate::uplink::{Uplink, UplinkError};
use crate::vhost_user::{serve_connection, ConnectionEnd, NetBackend};
use crate::virtio::features::SUPPORTED;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The uplink could not be set up.
    #[error("{0}")]
    Uplink(#[from] UplinkError),
    /// Another process serves the socket path.
    #[error("socket {0} is in use by another process")]
    SocketInUse(PathBuf),
    /// Binding the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Accepting a connection failed.
    #[error("cannot accept on {socket}: {source}")]
    Accept {
        /// The socket (its path, or the fd it was passed as).
        socket: String,
        /// Cause.
        source: io::Error,
    },
    /// The socket passed as an fd is not usable.
    #[error("vhost-user socket: {0}")]
    PassedSocket(#[from] PassedFdError),
    /// `--user` / `--group` could not be resolved or taken.
    #[error("{0}")]
    Privilege(#[from] PrivilegeError),
    /// The socket path names a directory.
    #[error("--socket {0} is a directory; give the path of a socket file to create in it")]
    SocketIsDirectory(PathBuf),
    /// The socket path names a file that is not a socket (never removed).
    #[error("--socket {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The socket path could not be examined.
    #[error("cannot examine --socket {path}: {source}")]
    SocketPath {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The stats file cannot be written.
    #[error("cannot write --stats-file {path}: {source}")]
    StatsFile {
        /// Stats file path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Signal handling could not be set up.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    /// The guest memory fault handler could not be installed.
    #[error("cannot install the guest memory fault handler: {0}")]
    FaultHandler(io::Error),
    /// The seccomp filter could not be installed.
    #[error("{0}")]
    Seccomp(#[from] crate::sandbox::SeccompError),
    /// `--metrics` or `--api-socket` cannot be served.
    #[error("{0}")]
    Api(#[from] ListenError),
    /// The API server thread could not be started.
    #[error("cannot start the API server thread: {0}")]
    ApiThread(io::Error),
}

/// Build the configured uplink.
pub fn open_uplink(config: &NetConfig) -> Result<Arc<dyn Uplink>, UplinkError> {
    let pairs = usize::from(config.queue_pairs);
    Ok(match &config.uplink {
        UplinkConfig::Tap(name) => Arc::new(Tap::open(name, pairs)?),
        UplinkConfig::TapFds(fds) => Arc::new(Tap::from_fds(fds)?),
        UplinkConfig::Test(TestUplinkArg::Null) => {
            Arc::new(TestUplink::new(TestUplinkKind::Null, pairs)?)
        }
        UplinkConfig::Test(TestUplinkArg::Loopback) => {
            Arc::new(TestUplink::new(TestUplinkKind::Loopback, pairs)?)
        }
        UplinkConfig::Test(TestUplinkArg::Generator) => {
            Arc::new(Generator::new(pairs, config.generator_size)?)
        }
        UplinkConfig::Xdp(iface) => Arc::new(Xdp::open_with(
            iface,
            pairs,
            &XdpOptions {
                zerocopy_tx: config.xdp_zerocopy_tx,
                ..XdpOptions::default()
            },
        )?),
    })
}

/// A readable end that becomes ready on SIGINT or SIGTERM.
fn stop_signal() -> io::Result<UnixStream> {
    let (read, write) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
    }
    Ok(read)
}

fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(DaemonError::SocketInUse(path.to_path_buf()));
            }
            // A stale socket file from an earlier run.
            let _ = std::fs::remove_file(path);
        }
        Ok(meta) if meta.is_dir() => {
            return Err(DaemonError::SocketIsDirectory(path.to_path_buf()))
        }
        Ok(_) => return Err(DaemonError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DaemonError::SocketPath {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    UnixListener::bind(path).map_err(|source| DaemonError::Listen {
        path: path.to_path_buf(),
        source,
    })
}

fn poll_two(a: &impl AsFd, b: &impl AsFd, timeout_ms: i32) -> io::Result<(bool, bool)> {
    use std::os::fd::AsRawFd;
    let mut fds = [
        libc::pollfd {
            fd: a.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a live array of two initialised pollfds; the count matches.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(e);
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

/// Connect to a listening VMM, retrying with backoff; None when stopped.
fn connect(path: &Path, stop: &UnixStream) -> Option<UnixStream> {
    let mut delay = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    let mut announced = false;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Some(s),
            Err(e) => {
                if !announced || waited >= Duration::from_secs(10) {
                    log::info!("waiting for the VMM to listen on {}: {e}", path.display());
                    announced = true;
                    waited = Duration::ZERO;
                }
            }
        }
        let ms = i32::try_from(delay.as_millis()).unwrap_or(1000);
        if let Ok((_, true)) = poll_two(stop, stop, ms) {
            return None;
        }
        waited += delay;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

fn spawn_stats_writer(metrics: Arc<DeviceMetrics>, path: PathBuf, done: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("vnm-stats".into())
        .spawn(move || {
            crate::sandbox::enter_or_exit(crate::sandbox::ThreadKind::Stats);
            while !done.load(Ordering::Acquire) {
                if let Err(e) = metrics.write_file(&path) {
                    log::warn!("cannot write stats file {}: {e}", path.display());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
}

/// Where frontends come from.
enum Endpoint {
    /// A listening socket; `path` is the file to remove at exit (bound by us).
    Listener {
        listener: UnixListener,
        path: Option<PathBuf>,
    },
    /// Connect to this path (`--client`).
    Connect(PathBuf),
    /// A socket already connected to the frontend: served once.
    Connected(Option<UnixStream>),
}

/// The endpoint before the privilege drop: ready, or a path still to bind.
enum Planned {
    Ready(Endpoint),
    Bind(PathBuf),
}

/// Take over a socket passed as an fd.
fn passed_endpoint(fd: std::os::fd::RawFd, what: &str) -> Result<Endpoint, DaemonError> {
    Ok(match crate::launch::fds::socket(fd, what)? {
        PassedSocket::Listener(listener) => {
            // Accept only when poll says so; another process may share the socket.
            listener
                .set_nonblocking(true)
                .map_err(|source| DaemonError::Accept {
                    socket: what.to_string(),
                    source,
                })?;
            Endpoint::Listener {
                listener,
                path: None,
            }
        }
        PassedSocket::Stream(s) => Endpoint::Connected(Some(s)),
    })
}

/// The stats file must be writable: fail now rather than warn twice a second forever.
fn check_stats_file(config: &NetConfig) -> Result<(), DaemonError> {
    if let Some(path) = &config.stats_file {
        DeviceMetrics::new(usize::from(config.queue_pairs))
            .write_file(path)
            .map_err(|source| DaemonError::StatsFile {
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Run the daemon until a signal (or the first disconnect with `--once`, or the end
/// of a connected socket passed as an fd).
pub fn run(config: NetConfig) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    crate::sandbox::init(config.seccomp)?;
    // Passed fds and the identity are checked before anything is created; a path is
    // bound after the privilege drop, so that its socket belongs to --user.
    let planned = match &config.socket {
        SocketConfig::Fd(fd) => Planned::Ready(passed_endpoint(*fd, "--fd")?),
        SocketConfig::Activated(a) => Planned::Ready(passed_endpoint(a.fd, "socket activation")?),
        SocketConfig::Connect(p) => Planned::Ready(Endpoint::Connect(p.clone())),
        SocketConfig::Listen(p) => Planned::Bind(p.clone()),
    };
    let identity = match &config.user {
        Some((user, group)) => Some(privilege::resolve(user, group.as_deref())?),
        None => None,
    };
    let stop = stop_signal().map_err(DaemonError::Signals)?;
    crate::netmem::fault::install().map_err(DaemonError::FaultHandler)?;
    if identity.is_none() {
        check_stats_file(&config)?;
    }
    let uplink = open_uplink(&config)?;
    if let Some(id) = &identity {
        // Still one thread: the capability calls are per thread.
        let keep = match config.uplink {
            UplinkConfig::Xdp(_) => Retained::XDP,
            _ => Retained::NONE,
        };
        privilege::drop_to(id, keep)?;
        log::info!("running as {id}, capabilities kept: {:#x}", keep.mask());
        check_stats_file(&config)?;
    }
    let endpoint = match planned {
        Planned::Ready(e) => e,
        Planned::Bind(path) => Endpoint::Listener {
            listener: bind(&path)?,
            path: Some(path),
        },
    };
    // Bound as --user, like the vhost-user socket; an address in use stops the start.
    let api_listeners = match crate::api::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            if let Endpoint::Listener {
                path: Some(path), ..
            } = &endpoint
            {
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }
    };
    let pairs = usize::from(config.queue_pairs);
    let metrics =
        Arc::new(DeviceMetrics::new(pairs).with_groups(|pair| uplink.queue_counters(pair)));
    let rate_limits = Arc::new(RateLimits::new(pairs, config.rate_limits));
    let done = Arc::new(AtomicBool::new(false));
    if let Some(path) = &config.stats_file {
        spawn_stats_writer(Arc::clone(&metrics), path.clone(), Arc::clone(&done));
    }
    let api = ApiThread::spawn(
        api_listeners,
        ApiState::new(
            Arc::clone(&config),
            Arc::clone(&metrics),
            Arc::clone(&rate_limits),
        ),
    )
    .map_err(DaemonError::ApiThread)?;
    crate::sandbox::enter(crate::sandbox::ThreadKind::Control)?;
    log::info!(
        "vhost-netmem {} on {} ({}), {} queue pair(s), uplink: {}",
        env!("CARGO_PKG_VERSION"),
        config.socket.describe(),
        match &endpoint {
            Endpoint::Listener { .. } => "listening",
            Endpoint::Connect(_) => "client",
            Endpoint::Connected(_) => "connected",
        },
        config.queue_pairs,
        uplink.describe()
    );
    let mut endpoint = endpoint;
    let result = serve(
        &config,
        &mut endpoint,
        &stop,
        &uplink,
        &metrics,
        &rate_limits,
    );
    done.store(true, Ordering::Release);
    if let Some(api) = api {
        api.stop();
    }
    if let Some(path) = &config.stats_file {
        if let Err(e) = metrics.write_file(path) {
            log::warn!("cannot write stats file {}: {e}", path.display());
        }
    }
    if let Endpoint::Listener {
        path: Some(path), ..
    } = &endpoint
    {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The next frontend's connection; None when stopped (or a passed connection was
/// served already).
fn next_stream(
    config: &NetConfig,
    endpoint: &mut Endpoint,
    stop: &UnixStream,
) -> Result<Option<UnixStream>, DaemonError> {
    let accept_error = |source| DaemonError::Accept {
        socket: config.socket.describe(),
        source,
    };
    match endpoint {
        Endpoint::Listener { listener, .. } => loop {
            match poll_two(listener, stop, -1) {
                Ok((_, true)) => return Ok(None),
                Ok((true, _)) => match listener.accept() {
                    Ok((s, _)) => {
                        // A passed listener is non-blocking; the connection is not.
                        s.set_nonblocking(false).map_err(accept_error)?;
                        return Ok(Some(s));
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                        ) => {}
                    Err(source) => return Err(accept_error(source)),
                },
                Ok(_) => {}
                Err(source) => return Err(accept_error(source)),
            }
        },
        Endpoint::Connect(path) => Ok(connect(path, stop)),
        Endpoint::Connected(s) => Ok(s.take()),
    }
}

fn serve(
    config: &Arc<NetConfig>,
    endpoint: &mut Endpoint,
    stop: &UnixStream,
    uplink: &Arc<dyn Uplink>,
    metrics: &Arc<DeviceMetrics>,
    rate_limits: &Arc<RateLimits>,
) -> Result<(), DaemonError> {
    loop {
        let Some(stream) = next_stream(config, endpoint, stop)? else {
            return Ok(());
        };
        let served_once = matches!(endpoint, Endpoint::Connected(_));
        log::debug!("connection accepted");
        let backend = Arc::new(Mutex::new(NetBackend::new(
            Arc::clone(config),
            SUPPORTED & !uplink.unsupported_features(),
            Arc::clone(uplink),
            Arc::clone(metrics),
            Arc::clone(rate_limits),
        )));
        let end = serve_connection(stream, Arc::clone(&backend), metrics.control(), stop);
        backend.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        match end {
            ConnectionEnd::Stopped => {
                log::info!("stopping on signal");
                return Ok(());
            }
            ConnectionEnd::Disconnected => log::info!("frontend disconnected"),
            ConnectionEnd::Probe => {
                log::debug!("connection closed before any request; still waiting");
                continue;
            }
            ConnectionEnd::ProtocolError(e) => {
                log::error!("closing connection after a protocol error: {e}")
            }
            ConnectionEnd::MemoryFault => log::error!(
                "closing connection: its guest memory faulted (the frontend shrank a memory region's file under the mapping)"
            ),
        }
        if config.once || served_once {
            return Ok(());
        }
    }
}
