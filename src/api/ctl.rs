// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vhost-netmem ctl`: the API socket's client. It sends one request, prints the
//! reply's body on stdout, and on an error status prints the server's message on
//! stderr and exits non-zero.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// How long the client waits for the backend.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply read.
const MAX_REPLY: u64 = 64 << 20;

/// `vhost-netmem ctl` options.
#[derive(Debug, clap::Args)]
#[command(
    about = "Ask a running backend over its --api-socket",
    after_help = "Examples:\n  vhost-netmem ctl --api-socket /tmp/vnm.api stats\n  vhost-netmem ctl --api-socket /tmp/vnm.api rate-limit get 0\n  vhost-netmem ctl --api-socket /tmp/vnm.api rate-limit set 0 \\\n      '{\"tx\": {\"bandwidth\": {\"size\": 125000, \"refill_time_ms\": 100}}}'"
)]
pub struct CtlArgs {
    /// The backend's --api-socket path.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,

    /// What to ask.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ctl` requests.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// The counters, as JSON (GET /stats).
    Stats,
    /// The counters in Prometheus' text format (GET /metrics).
    Metrics,
    /// The effective configuration, as JSON (GET /config).
    Config,
    /// A queue pair's rate limits (GET or PUT /queues/PAIR/rate-limit).
    RateLimit {
        /// Get or set.
        #[command(subcommand)]
        action: RateLimitAction,
    },
}

/// `ctl rate-limit` actions.
#[derive(Debug, clap::Subcommand)]
pub enum RateLimitAction {
    /// Print pair PAIR's limits.
    Get {
        /// Queue pair, from 0.
        #[arg(allow_negative_numbers = true)]
        pair: i64,
    },
    /// Replace pair PAIR's limits with JSON: {"tx": {"bandwidth": {"size": BYTES,
    /// "refill_time_ms": MS, "one_time_burst": BYTES}, "ops": {...}}, "rx": {...}}
    /// (an absent direction or bucket is unlimited; {} lifts every limit).
    Set {
        /// Queue pair, from 0.
        #[arg(allow_negative_numbers = true)]
        pair: i64,
        /// The limits, as JSON.
        json: String,
    },
}

/// A request that did not get a good reply.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {source}", .path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("talking to {}: {source}", .path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The reply is not HTTP.
    #[error("malformed reply from the backend: {0}")]
    Reply(String),
    /// The backend answered with an error status.
    #[error("{status} {reason}: {message}")]
    Status {
        /// Status code.
        status: u16,
        /// Reason phrase.
        reason: String,
        /// The server's message (its `error` field, else the body).
        message: String,
    },
}

/// A reply: status and body.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// Send `method path` with `body` to the API socket at `socket`; the reply whatever
/// its status.
pub fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> Result<Reply, CtlError> {
    let io_error = |source| CtlError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| CtlError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io_error)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io_error)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(io_error)?;
    s.write_all(body).map_err(io_error)?;
    let mut raw = Vec::new();
    s.take(MAX_REPLY).read_to_end(&mut raw).map_err(io_error)?;
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Result<Reply, CtlError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(CtlError::Reply("incomplete head".into())),
        Err(e) => return Err(CtlError::Reply(e.to_string())),
    };
    let status = r.code.unwrap_or(0);
    let length = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = &raw[head..];
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        Some(n) => {
            return Err(CtlError::Reply(format!(
                "body of {} bytes, {n} announced",
                body.len()
            )))
        }
        None => body,
    };
    Ok(Reply {
        status,
        body: body.to_vec(),
    })
}

/// The request `command` makes: method, path, body.
fn plan(command: &CtlCommand) -> (&'static str, String, Vec<u8>) {
    match command {
        CtlCommand::Stats => ("GET", "/stats".into(), Vec::new()),
        CtlCommand::Metrics => ("GET", "/metrics".into(), Vec::new()),
        CtlCommand::Config => ("GET", "/config".into(), Vec::new()),
        CtlCommand::RateLimit { action } => match action {
            RateLimitAction::Get { pair } => {
                ("GET", format!("/queues/{pair}/rate-limit"), Vec::new())
            }
            RateLimitAction::Set { pair, json } => (
                "PUT",
                format!("/queues/{pair}/rate-limit"),
                json.as_bytes().to_vec(),
            ),
        },
    }
}

/// Run `args`: the reply body on success, the error otherwise.
pub fn call(args: &CtlArgs) -> Result<Vec<u8>, CtlError> {
    let (method, path, body) = plan(&args.command);
    let reply = request(&args.api_socket, method, &path, &body)?;
    if reply.status >= 400 || reply.status < 200 {
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.trim().to_string());
        return Err(CtlError::Status {
            status: reply.status,
            reason: super::http::reason(reply.status).to_string(),
            message,
        });
    }
    Ok(reply.body)
}

/// `vhost-netmem ctl`: print the reply, or the error and exit non-zero.
pub fn run(args: &CtlArgs) -> ExitCode {
    match call(args) {
        Ok(body) => {
            let mut out = io::stdout().lock();
            let ok = out.write_all(&body).is_ok()
                && (body.ends_with(b"\n") || out.write_all(b"\n").is_ok())
                && out.flush().is_ok();
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vhost-netmem ctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_by_their_length() {
        let r = parse_reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nabcdeXX").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(parse_reply(b"garbage").is_err());
    }

    #[test]
    fn commands_map_to_routes() {
        let set = CtlCommand::RateLimit {
            action: RateLimitAction::Set {
                pair: -1,
                json: "{}".into(),
            },
        };
        assert_eq!(
            plan(&set),
            ("PUT", "/queues/-1/rate-limit".to_string(), b"{}".to_vec())
        );
        assert_eq!(plan(&CtlCommand::Stats).1, "/stats");
    }
}
