// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The HTTP side of the daemon: the Prometheus exposition on `--metrics` and the
//! control API on `--api-socket`, served by one thread under its own seccomp filter
//! (`ThreadKind::Api`), and `vhost-netmem ctl`, the API's client.
//!
//! - [`listen`]: the addresses, bound at start-up (an address in use stops the start).
//! - [`http`]: requests (parsed within size limits) and responses.
//! - [`server`]: the poll loop over the listeners and connections.
//! - [`routes`]: what each route replies.
//! - [`prometheus`]: the text exposition of the counters and the process.
//! - [`process`]: the process's figures from /proc/self.
//! - [`config_view`]: the effective configuration as JSON.
//! - [`ctl`]: the client subcommand.
//!
//! The server thread only reads the counters (single-writer atomics) and writes the
//! rate limit store, whose generation the workers poll: it never waits on the data
//! path, and the data path never waits on it.

pub mod config_view;
pub mod ctl;
pub mod http;
pub mod listen;
pub mod process;
pub mod prometheus;
pub mod routes;
pub mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use listen::{ListenError, Listener};
use routes::{ApiState, Role};
use server::Server;

use crate::config::NetConfig;

/// Bind `--metrics` and `--api-socket` (none, one or both).
pub fn bind(config: &NetConfig) -> Result<Vec<(Listener, Role)>, ListenError> {
    let mut listeners = Vec::new();
    if let Some(addr) = &config.metrics {
        listeners.push((Listener::bind("--metrics", addr)?, Role::Metrics));
    }
    if let Some(path) = &config.api_socket {
        let addr = listen::ListenAddr::Unix(path.clone());
        match Listener::bind("--api-socket", &addr) {
            Ok(l) => listeners.push((l, Role::Api)),
            Err(e) => {
                for (l, _) in &listeners {
                    l.remove_file();
                }
                return Err(e);
            }
        }
    }
    Ok(listeners)
}

/// The running server thread.
#[derive(Debug)]
pub struct ApiThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Server>>,
}

impl ApiThread {
    /// Serve `state` on `listeners` from a new thread (none when there are no
    /// listeners).
    pub fn spawn(
        listeners: Vec<(Listener, Role)>,
        state: ApiState,
    ) -> std::io::Result<Option<ApiThread>> {
        if listeners.is_empty() {
            return Ok(None);
        }
        for (l, role) in &listeners {
            let addr = match l {
                Listener::Tcp(t) => t.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                Listener::Unix { path, .. } => path.display().to_string(),
            };
            match role {
                Role::Metrics => log::info!("serving Prometheus metrics on {addr}"),
                Role::Api => log::info!("serving the API on {addr}"),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let mut server = Server::new(listeners, Arc::new(state));
        let thread = std::thread::Builder::new()
            .name("vnm-api".into())
            .spawn(move || {
                crate::sandbox::enter_or_exit(crate::sandbox::ThreadKind::Api);
                server.run(&flag);
                server
            })?;
        Ok(Some(ApiThread {
            stop,
            thread: Some(thread),
        }))
    }

    /// Stop serving (within the loop's tick) and remove the unix socket files.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if let Ok(server) = t.join() {
                server.remove_files();
            }
        }
    }
}
