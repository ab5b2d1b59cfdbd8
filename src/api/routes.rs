// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The routes: what each request gets.
//!
//! On the API socket:
//!
//! | route | method | reply |
//! | --- | --- | --- |
//! | `/stats` | GET | the stats document (as `--stats-file` writes it), JSON |
//! | `/metrics` | GET | the Prometheus text exposition |
//! | `/config` | GET | the effective configuration, JSON |
//! | `/queues/PAIR/rate-limit` | GET | pair PAIR's limits, JSON (`PairLimits`) |
//! | `/queues/PAIR/rate-limit` | PUT | replace them: the body is a `PairLimits`; the reply is the limits now in force |
//!
//! On the `--metrics` address only `GET /metrics` (and `GET /`, a pointer to it).
//! Errors are JSON, `{"error": "..."}`: 404 for an unknown route or queue pair, 405
//! for a method the route does not take (with `Allow`), 400 for malformed JSON or a
//! limit out of range (the `RateLimitError` message), 413 for a body too large. A PUT
//! is in the shared store, its generation moved for the pair's worker, before the
//! reply is sent.

use std::sync::Arc;

use super::config_view::config_json;
use super::http::{Request, Response};
use super::prometheus::{self, Exposition};
use crate::config::NetConfig;
use crate::metrics::DeviceMetrics;
use crate::ratelimit::{PairLimits, RateLimitError, RateLimits};

/// Which listener a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--api-socket`: every route.
    Api,
    /// `--metrics`: the exposition only.
    Metrics,
}

/// What the routes serve.
#[derive(Debug)]
pub struct ApiState {
    config: Arc<NetConfig>,
    metrics: Arc<DeviceMetrics>,
    rate_limits: Arc<RateLimits>,
    exposition: Exposition,
}

/// A route, parsed from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Root,
    Stats,
    Metrics,
    Config,
    /// The pair as written in the path (checked against the store).
    RateLimit(&'a str),
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    Some(match path {
        "/" => Route::Root,
        "/stats" => Route::Stats,
        "/metrics" => Route::Metrics,
        "/config" => Route::Config,
        p => {
            let pair = p.strip_prefix("/queues/")?.strip_suffix("/rate-limit")?;
            if pair.is_empty() || pair.contains('/') {
                return None;
            }
            Route::RateLimit(pair)
        }
    })
}

fn no_such_pair(pair: &str, pairs: usize) -> Response {
    Response::error(
        404,
        &format!("queue pair {pair:?} does not exist (this backend has {pairs}, numbered from 0)"),
    )
}

fn method_not_allowed(method: &str, allow: &'static str) -> Response {
    let mut r = Response::error(
        405,
        &format!("method {method} not allowed here; allowed: {allow}"),
    );
    r.headers.push(("Allow", allow.to_string()));
    r
}

impl ApiState {
    /// Serve `config`, `metrics` and `rate_limits`.
    pub fn new(
        config: Arc<NetConfig>,
        metrics: Arc<DeviceMetrics>,
        rate_limits: Arc<RateLimits>,
    ) -> Self {
        ApiState {
            config,
            exposition: Exposition::new(Arc::clone(&metrics)),
            metrics,
            rate_limits,
        }
    }

    fn metrics_text(&self) -> Response {
        match self.exposition.encode() {
            Ok(text) => Response::text(prometheus::CONTENT_TYPE, text),
            Err(e) => Response::error(500, &format!("cannot encode the metrics: {e}")),
        }
    }

    fn rate_limit(&self, method: &str, pair: &str, body: &[u8]) -> Response {
        let pairs = self.rate_limits.pairs();
        let Some(index) = pair.parse::<usize>().ok().filter(|i| *i < pairs) else {
            return no_such_pair(pair, pairs);
        };
        match method {
            "GET" => match self.rate_limits.get(index) {
                Ok(l) => Response::json(200, &l),
                Err(e) => Response::error(404, &e.to_string()),
            },
            "PUT" => {
                let limits: PairLimits = match serde_json::from_slice(body) {
                    Ok(l) => l,
                    Err(e) => return Response::error(400, &format!("invalid rate limit: {e}")),
                };
                match self.rate_limits.set(index, limits) {
                    Ok(()) => {
                        log::info!("queue pair {index}: rate limits set by the API: {limits:?}");
                        Response::json(200, &limits)
                    }
                    Err(e @ RateLimitError::NoSuchPair { .. }) => {
                        Response::error(404, &e.to_string())
                    }
                    Err(e) => Response::error(400, &format!("invalid rate limit: {e}")),
                }
            }
            m => method_not_allowed(m, "GET, PUT"),
        }
    }

    /// The reply to `req` from a `role` listener.
    pub fn route(&self, role: Role, req: &Request) -> Response {
        let route = parse_route(&req.path)
            .filter(|r| role == Role::Api || matches!(r, Route::Metrics | Route::Root));
        let Some(route) = route else {
            return Response::error(404, &format!("no route {}", req.path));
        };
        if let Route::RateLimit(pair) = route {
            return self.rate_limit(&req.method, pair, &req.body);
        }
        if req.method != "GET" {
            return method_not_allowed(&req.method, "GET");
        }
        match route {
            Route::Root => {
                let routes = match role {
                    Role::Api => vec![
                        "GET /stats",
                        "GET /metrics",
                        "GET /config",
                        "GET /queues/PAIR/rate-limit",
                        "PUT /queues/PAIR/rate-limit",
                    ],
                    Role::Metrics => vec!["GET /metrics"],
                };
                Response::json(200, &serde_json::json!({ "routes": routes }))
            }
            Route::Stats => Response::json(200, &self.metrics.document()),
            Route::Metrics => self.metrics_text(),
            Route::Config => Response::json(200, &config_json(&self.config)),
            Route::RateLimit(_) => unreachable!("served above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Cli;

    fn state(pairs: &str) -> ApiState {
        let cli = Cli::try_parse_from([
            "vnm", "--socket", "/tmp/s", "--uplink", "null", "--queues", pairs,
        ])
        .unwrap();
        let config = Arc::new(NetConfig::from_cli(cli).unwrap());
        let n = usize::from(config.queue_pairs);
        ApiState::new(
            config,
            Arc::new(DeviceMetrics::new(n)),
            Arc::new(RateLimits::new(n, PairLimits::default())),
        )
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn a_put_is_in_the_store_when_the_reply_is_made() {
        let s = state("2");
        let before = s.rate_limits.generation(1);
        let put = r#"{"rx": {"bandwidth": {"size": 125000, "refill_time_ms": 100}}}"#;
        let r = s.route(Role::Api, &req("PUT", "/queues/1/rate-limit", put));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(s.rate_limits.generation(1), before + 1);
        let want: PairLimits = serde_json::from_str(put).unwrap();
        assert_eq!(s.rate_limits.get(1).unwrap(), want);
        assert_eq!(s.rate_limits.generation(0), 0);
        let r = s.route(Role::Api, &req("GET", "/queues/1/rate-limit", ""));
        assert_eq!(body(&r), serde_json::to_value(want).unwrap());
    }

    #[test]
    fn bad_input_gets_a_status_and_a_message() {
        let s = state("2");
        let cases = [
            ("GET", "/nope", "", 404, "no route"),
            ("GET", "/queues/2/rate-limit", "", 404, "does not exist"),
            ("GET", "/queues/-1/rate-limit", "", 404, "does not exist"),
            ("GET", "/queues/x/rate-limit", "", 404, "does not exist"),
            (
                "PUT",
                "/queues/0/rate-limit",
                "{",
                400,
                "invalid rate limit",
            ),
            (
                "PUT",
                "/queues/0/rate-limit",
                r#"{"tx": {"bandwidth": {"size": -5, "refill_time_ms": 100}}}"#,
                400,
                "invalid value",
            ),
            (
                "PUT",
                "/queues/0/rate-limit",
                r#"{"tx": {"ops": {"size": 10, "refill_time_ms": 99999999999}}}"#,
                400,
                "refill_time_ms must be between",
            ),
            (
                "PUT",
                "/queues/0/rate-limit",
                r#"{"tx": {"ops": {"size": 0, "refill_time_ms": 100}}}"#,
                400,
                "size must be at least 1",
            ),
            (
                "PUT",
                "/queues/0/rate-limit",
                r#"{"tz": {}}"#,
                400,
                "unknown field",
            ),
            ("DELETE", "/queues/0/rate-limit", "", 405, "not allowed"),
            ("POST", "/stats", "", 405, "not allowed"),
        ];
        for (method, path, b, status, msg) in cases {
            let r = s.route(Role::Api, &req(method, path, b));
            assert_eq!(r.status, status, "{method} {path} {b}");
            let e = body(&r)["error"].as_str().unwrap().to_string();
            assert!(e.contains(msg), "{method} {path} {b}: {e}");
        }
        assert_eq!(
            s.rate_limits.generation(0),
            0,
            "no bad PUT changed anything"
        );
        let r = s.route(Role::Api, &req("DELETE", "/stats", ""));
        assert!(r.headers.contains(&("Allow", "GET".to_string())));
    }

    #[test]
    fn the_metrics_listener_serves_the_exposition_only() {
        let s = state("1");
        assert_eq!(
            s.route(Role::Metrics, &req("GET", "/metrics", "")).status,
            200
        );
        assert_eq!(
            s.route(Role::Metrics, &req("GET", "/stats", "")).status,
            404
        );
        assert_eq!(
            s.route(Role::Metrics, &req("PUT", "/queues/0/rate-limit", "{}"))
                .status,
            404
        );
        let r = s.route(Role::Api, &req("GET", "/stats", ""));
        assert_eq!(body(&r)["queues"].as_array().unwrap().len(), 1);
        let r = s.route(Role::Api, &req("GET", "/config", ""));
        assert_eq!(body(&r)["uplink"], serde_json::json!({"test": "null"}));
    }
}
