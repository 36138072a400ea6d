//! The admin API on its own listener: health, metrics, status, and every
//! change to the table (each one through the control plane's single writer).

pub mod status;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, Syntax};
use crate::control::{Change, ControlPlane, Rejection};
use crate::journal::Query;
use crate::proxy::response::ResponseBody;
use crate::rollout::controller::{Action, ActionError};

/// Largest request body the admin API reads.
pub const MAX_BODY: usize = 1024 * 1024;

/// Said with every answer to an action in a fleet.
const FLEET_NOTE: &str = "acted on this replica only; the fleet acts through the shared config (rollout.paused, rollout.action, rollout.generation)";

/// What the admin handlers share.
pub struct Admin {
    pub connections: Arc<crate::proxy::Connections>,
    pub control: Arc<ControlPlane>,
    pub rollouts: Arc<crate::rollout::controller::Rollouts>,
    pub token: Option<Arc<str>>,
    /// Set once every listener is bound and serving.
    pub ready: AtomicBool,
}

type Reply = Response<ResponseBody>;

/// Serves the admin API until `shutdown` turns true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec_pretty(value).expect("admin answers serialize");
    let mut r = Response::new(ResponseBody::local(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(ResponseBody::local(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn rejection(r: Rejection) -> Reply {
    match r {
        Rejection::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        Rejection::Owned(m) => error(StatusCode::CONFLICT, m),
        Rejection::Invalid(p) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({
                "error": format!("rejected; the running table is unchanged: {}", p.0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")),
                "problems": p.0,
            }),
        ),
    }
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return false;
        };
        constant_time_eq(given, token.as_bytes())
    }

    async fn handle(&self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Reply {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        let mutation = !matches!(method, Method::GET | Method::HEAD);
        if mutation && !self.authorized(&req) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this change needs Authorization: Bearer <token> (admin.token_file)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let actor = format!("admin {peer}");
        let query = req.uri().query().unwrap_or("").to_string();
        let wants_yaml = query.split('&').any(|kv| kv == "format=yaml")
            || req
                .headers()
                .get(header::ACCEPT)
                .is_some_and(|a| a.as_bytes().windows(4).any(|w| w == b"yaml"));
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = if mutation {
            match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body is larger than {MAX_BODY} bytes"),
                    );
                }
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}"),
                    )
                }
            }
        } else {
            Bytes::new()
        };
        let control = &self.control;
        match (&method, segments.as_slice()) {
            (&Method::GET, []) => text(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
            (&Method::GET, ["healthz"]) => text(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, ["readyz"]) => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
                }
            }
            (&Method::GET, ["metrics"]) => {
                control
                    .metrics
                    .connections(self.connections.open(), self.connections.parked());
                let mut out = control.metrics.render();
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                let table = control.current();
                crate::stats::prom::render_backends(
                    &mut out,
                    table.routes.iter().flat_map(|r| {
                        r.backends
                            .iter()
                            .map(move |b| (&*r.name, &*b.name, &*b.stats))
                    }),
                );
                out.push('\n');
                crate::stats::prom::render_config_info(&mut out, &table.config.digest);
                self.rollouts.render_metrics(&mut out, &table);
                text(StatusCode::OK, "text/plain; version=0.0.4", out)
            }
            (&Method::GET, ["status"]) => json(StatusCode::OK, &self.status(&control.current())),
            (&Method::GET, ["config"]) => {
                let doc = control.current().config.document.clone();
                if wants_yaml {
                    match serde_saphyr::to_string(&*doc) {
                        Ok(y) => text(StatusCode::OK, "application/yaml", y),
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                } else {
                    json(StatusCode::OK, &*doc)
                }
            }
            (&Method::PUT, ["config"]) => {
                let Ok(text) = std::str::from_utf8(&body) else {
                    return error(StatusCode::BAD_REQUEST, "the config must be UTF-8 text");
                };
                let syntax = if content_type.contains("json") || text.trim_start().starts_with('{')
                {
                    Syntax::Json
                } else {
                    Syntax::Yaml
                };
                match config::parse_document(text, syntax) {
                    Ok(doc) => self.applied(
                        control.apply(Change::Replace(Box::new(doc)), &actor, None),
                        None,
                    ),
                    Err(p) => {
                        control.reject_unparsed(&p, &actor, "new configuration");
                        rejection(Rejection::Invalid(p))
                    }
                }
            }
            (&Method::PUT, ["routes", route, "weights"]) => {
                let weights: BTreeMap<String, u64> = match serde_json::from_slice(&body) {
                    Ok(w) => w,
                    Err(e) => {
                        let p = config::Problem::new(
                            "weights",
                            format!("the body must be a JSON object of backend names to weights, as {{\"stable\": 90, \"canary\": 10}}: {e}"),
                        );
                        let p = config::Problems(vec![p]);
                        control.reject_unparsed(&p, &actor, &format!("weights of route {route}"));
                        return rejection(Rejection::Invalid(p));
                    }
                };
                // A route a running rollout drives is refused by apply, the
                // one place that knows who owns a route's weights.
                let change = Change::Weights {
                    route: route.to_string(),
                    weights,
                };
                let result = control.apply(change, &actor, None);
                if result.is_ok() {
                    self.rollouts.weights_set_by_hand(Some(route));
                }
                self.applied(result, Some(route))
            }
            (&Method::POST, ["routes", route, "rollback"]) if control.owner(route).is_some() => {
                // Rolling back a route under a rollout aborts the rollout.
                self.acted(self.rollouts.act(route, Action::Abort, &actor), route)
            }
            (&Method::POST, ["routes", route, "rollout", action]) => match Action::parse(action) {
                Some(a) => self.acted(self.rollouts.act(route, a, &actor), route),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no rollout action \"{action}\" (promote, pause, resume, abort, restart)"
                    ),
                ),
            },
            (&Method::GET, ["routes", route, "report"]) => match self.rollouts.report(route) {
                Ok(Some(md)) => text(StatusCode::OK, "text/markdown; charset=utf-8", md),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    format!("route {route} has had no rollback to report"),
                ),
                Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
            },
            (&Method::POST, ["routes", route, "rollback"]) => {
                let change = Change::Rollback {
                    route: route.to_string(),
                };
                let result = control.apply(change, &actor, Some("requested through the admin API"));
                if result.is_ok() {
                    self.rollouts.weights_set_by_hand(Some(route));
                }
                self.applied(result, Some(route))
            }
            (&Method::GET, ["history"]) => {
                let current = control.current().version;
                let list: Vec<_> = control
                    .history()
                    .into_iter()
                    .map(|v| {
                        serde_json::json!({
                            "version": v.version, "time": v.time, "actor": v.actor,
                            "reason": v.reason, "current": v.version == current,
                        })
                    })
                    .collect();
                json(StatusCode::OK, &list)
            }
            (&Method::GET, ["history", version]) => match version.parse::<u64>() {
                Ok(v) => match control.history().into_iter().find(|h| h.version == v) {
                    Some(h) => json(StatusCode::OK, &h),
                    None => error(StatusCode::NOT_FOUND, format!("no version {v} in history")),
                },
                Err(_) => error(
                    StatusCode::BAD_REQUEST,
                    format!("\"{version}\" is not a version number"),
                ),
            },
            (&Method::POST, ["history", version, "restore"]) => match version.parse::<u64>() {
                Ok(v) => {
                    let result = control.apply(Change::Restore { version: v }, &actor, None);
                    if result.is_ok() {
                        self.rollouts.weights_set_by_hand(None);
                    }
                    self.applied(result, None)
                }
                Err(_) => error(
                    StatusCode::BAD_REQUEST,
                    format!("\"{version}\" is not a version number"),
                ),
            },
            (&Method::GET, ["events"]) => match events_query(&query) {
                Ok(q) => json(StatusCode::OK, &control.journal.query(&q)),
                Err(m) => error(StatusCode::BAD_REQUEST, m),
            },
            (_, ["healthz" | "readyz" | "metrics" | "status" | "history" | "events"])
            | (_, ["history", _]) => method_not_allowed("GET"),
            (_, ["config"]) => method_not_allowed("GET, PUT"),
            (_, ["routes", _, "weights"]) => method_not_allowed("PUT"),
            (_, ["routes", _, "rollback"])
            | (_, ["history", _, "restore"])
            | (_, ["routes", _, "rollout", _]) => method_not_allowed("POST"),
            (_, ["routes", _, "report"]) => method_not_allowed("GET"),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {method} {path}"),
            ),
        }
    }

    /// Answers a change with the status it made: of the one route it
    /// concerned, or of all.
    fn applied(
        &self,
        result: Result<Arc<crate::table::Table>, Rejection>,
        route: Option<&str>,
    ) -> Reply {
        match result {
            Ok(table) => json(StatusCode::OK, &self.status_of(&table, route)),
            Err(r) => rejection(r),
        }
    }

    /// In a fleet, an action through the admin API is this process's alone.
    fn acted(&self, result: Result<(), ActionError>, route: &str) -> Reply {
        match result {
            Ok(()) => {
                let table = self.control.current();
                let mut s = self.status_of(&table, Some(route));
                if table.config.fleet.is_some() {
                    s.note = Some(FLEET_NOTE.into());
                }
                json(StatusCode::OK, &s)
            }
            Err(ActionError::NoRollout(r)) => {
                error(StatusCode::NOT_FOUND, format!("route {r} has no rollout"))
            }
            Err(ActionError::NotNow(m)) => error(StatusCode::CONFLICT, m),
            Err(ActionError::Rejected(r)) => rejection(r),
        }
    }

    fn status(&self, table: &crate::table::Table) -> status::Status {
        self.status_of(table, None)
    }

    fn status_of(&self, table: &crate::table::Table, route: Option<&str>) -> status::Status {
        let mut s = status::status_of(table, route);
        s.connections = status::ConnectionsStatus {
            open: self.connections.open(),
            parked: self.connections.parked(),
        };
        for r in &mut s.routes {
            r.rollout = self.rollouts.view(&r.name);
        }
        s.fleet = self.rollouts.fleet_status(table);
        s
    }
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this endpoint takes {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn events_query(query: &str) -> Result<Query, String> {
    let mut q = Query::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "route" => q.route = Some(v),
            "since" => {
                if let Ok(seq) = v.parse::<u64>() {
                    q.since_seq = Some(seq);
                } else {
                    let ts: jiff::Timestamp = v.parse().map_err(|_| {
                        format!("since=\"{v}\" is neither an event number nor an RFC 3339 time")
                    })?;
                    q.since_unix_ms = Some(ts.as_millisecond());
                }
            }
            "limit" => {
                q.limit = Some(
                    v.parse()
                        .map_err(|_| format!("limit=\"{v}\" is not a number"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown query parameter \"{other}\" (route, since, limit)"
                ))
            }
        }
    }
    Ok(q)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const DASHBOARD: &str = include_str!("dashboard.html");
