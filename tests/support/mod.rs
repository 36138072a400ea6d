//! Shared pieces of the integration tests: real backends on 127.0.0.1:0
//! with knobs, a proxy started in-process on port 0, and a pooled client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub mod prometheus;

/// A TLS server side with this certificate chain and key (PEM), offering
/// h2 and http/1.1 by ALPN; with `client_ca` (PEM), it requires a client
/// certificate that CA issued.
pub fn tls_acceptor(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
) -> tokio_rustls::TlsAcceptor {
    tls_acceptor_offering(cert_pem, key_pem, client_ca, &[b"h2", b"http/1.1"])
}

/// [`tls_acceptor`], offering `alpn` by ALPN.
pub fn tls_acceptor_offering(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let pem_certs = |pem: &str| {
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in pem_certs(ca) {
                roots.add(c).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(pem_certs(cert_pem), key).unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A hyper backend that answers with its name and counts what it saw.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    /// Whether it speaks only TLS (an `https://` backend).
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub struct BackendState {
    /// Requests received.
    pub seen: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Request body bytes received, all requests together.
    pub body_bytes: AtomicU64,
    /// Requests answered with each status.
    pub statuses: Mutex<HashMap<u16, u64>>,
    /// Status to answer with (0 → 200).
    pub status: AtomicU16,
    /// Answer every `fail_every`-th request with 500 (0 → never).
    pub fail_every: AtomicU64,
    /// Delay before answering, in ms.
    pub delay_ms: AtomicU64,
    /// The headers of the last request.
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// The request target of the last request, as it arrived.
    pub last_target: Mutex<Option<String>>,
    /// Requests that carried a given header, by header name.
    pub marked: Mutex<HashMap<String, u64>>,
}

impl BackendState {
    pub fn seen(&self) -> u64 {
        self.seen.load(Relaxed)
    }
    pub fn count(&self, status: u16) -> u64 {
        self.statuses
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }
    pub fn marked(&self, header: &str) -> u64 {
        self.marked
            .lock()
            .unwrap()
            .get(header)
            .copied()
            .unwrap_or(0)
    }
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        Self::start_on(
            name,
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            false,
            None,
        )
        .await
    }

    /// An h2c-only backend (HTTP/2 with prior knowledge).
    pub async fn start_h2c(name: &'static str) -> Backend {
        Self::start_on(
            name,
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            true,
            None,
        )
        .await
    }

    /// A backend that speaks HTTP/1.1 over TLS only (see [`tls_acceptor`]).
    pub async fn start_tls(name: &'static str, acceptor: tokio_rustls::TlsAcceptor) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(name, listener, false, Some(acceptor)).await
    }

    async fn start_on(
        name: &'static str,
        listener: TcpListener,
        h2_only: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Backend {
        let is_tls = tls.is_some();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.accepted.fetch_add(1, Relaxed);
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(name, &st, req).await) }
                    });
                    let mut b = auto::Builder::new(TokioExecutor::new());
                    if h2_only {
                        b = b.http2_only();
                    }
                    match tls {
                        None => {
                            let _ = b.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            // A client that does not trust the certificate
                            // ends here, before any request.
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = b.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                    }
                });
            }
        });
        Backend {
            name,
            addr,
            state,
            tls: is_tls,
            task,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(name: &str, st: &BackendState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let n = st.seen.fetch_add(1, Relaxed) + 1;
    {
        let mut marked = st.marked.lock().unwrap();
        for h in req.headers().keys() {
            if h.as_str().starts_with("x-mark") {
                *marked.entry(h.as_str().to_string()).or_default() += 1;
            }
        }
    }
    *st.last_headers.lock().unwrap() = Some(req.headers().clone());
    *st.last_target.lock().unwrap() = Some(req.uri().to_string());
    let delay = st.delay_ms.load(Relaxed);
    // Echo the body's length so tests see that bodies stream through.
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    st.body_bytes.fetch_add(body.len() as u64, Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let every = st.fail_every.load(Relaxed);
    let mut status = match st.status.load(Relaxed) {
        0 => 200,
        s => s,
    };
    if every > 0 && n % every == 0 {
        status = 500;
    }
    *st.statuses.lock().unwrap().entry(status).or_default() += 1;
    let mut r = Response::new(Full::new(Bytes::from(format!("{name} {}", body.len()))));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

/// A TCP server that misbehaves: resets every connection, or answers garbage.
pub async fn start_broken(garbage: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if garbage {
                    let _ = s.write_all(b"this is not http\r\n\r\n").await;
                } else {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
                drop(s);
            });
        }
    });
    (addr, task)
}

/// An address nothing listens on (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Starts sluice in-process from YAML; listeners and admin on port 0.
pub async fn start_proxy(yaml: &str) -> sluice::server::Running {
    start_proxy_in(yaml, Path::new(".")).await
}

pub async fn start_proxy_in(yaml: &str, base: &Path) -> sluice::server::Running {
    let doc = sluice::config::parse_document(yaml, sluice::config::Syntax::Yaml)
        .expect("test config parses");
    let cfg = sluice::config::validate(doc, base).expect("test config is valid");
    let options = sluice::server::Options {
        base_dir: Some(base.to_path_buf()),
        ..Default::default()
    };
    sluice::server::start(cfg, options)
        .await
        .expect("proxy starts")
}

/// A config with one route over the given backends (name, url, weight).
pub fn route_yaml(extra_route: &str, backends: &[(&str, String, u32)]) -> String {
    let mut y = String::from(
        "listeners:\n  - addr: 127.0.0.1:0\nadmin:\n  addr: 127.0.0.1:0\nroutes:\n  - name: api\n",
    );
    for line in extra_route.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("    {line}\n"));
    }
    y.push_str("    backends:\n");
    for (name, url, w) in backends {
        y.push_str(&format!(
            "      - {{ name: {name}, url: \"{url}\", weight: {w} }}\n"
        ));
    }
    y
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// One request; returns status, headers and body text.
pub async fn send(
    c: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, String) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        c.request(b.body(Full::new(body.into())).unwrap()),
    )
    .await
    .expect("request finished in time")
    .expect("request got a response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get(c: &HttpClient, url: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let (s, _, b) = send(c, "GET", url, headers, Bytes::new()).await;
    (s, b)
}

/// The backend name a demo-style body starts with.
pub fn who(body: &str) -> &str {
    body.split(' ').next().unwrap_or("")
}

/// Sum of a metric's samples whose labels contain every `want` pair;
/// panics, with the exposition, when no series matches (a metric that is
/// not there is not 0).
pub fn metric(exposition: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    metric_if_any(exposition, name, want)
        .unwrap_or_else(|| panic!("no series {name} {want:?} in:\n{exposition}"))
}

/// [`metric`], or `None` when no series matches.
pub fn metric_if_any(exposition: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = want
                .iter()
                .all(|(k, v)| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Polls `/metrics` every 20 ms for up to `within` until the samples of
/// `name` with the `want` labels (see [`metric`]) sum to `value`; panics
/// with the exposition if they never do, else returns it.
pub async fn wait_metric(
    p: &sluice::server::Running,
    name: &str,
    want: &[(&str, &str)],
    value: f64,
    within: Duration,
) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let m = admin_text(p, "/metrics").await;
        if metric_if_any(&m, name, want) == Some(value) {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} {want:?} never reached {value}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts sluice in-process from a config file it watches every 50 ms.
pub async fn start_proxy_file(path: &Path) -> sluice::server::Running {
    let cfg = sluice::config::load(path).expect("test config is valid");
    sluice::server::start(
        cfg,
        sluice::server::Options {
            config_path: Some(path.to_path_buf()),
            watch_interval: Some(Duration::from_millis(50)),
            ..Default::default()
        },
    )
    .await
    .expect("proxy starts")
}

/// Polls `check` every 20 ms for up to `within`; panics with `what` if it never holds.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut check: F) {
    let deadline = std::time::Instant::now() + within;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The current table version of a running proxy.
pub fn version(p: &sluice::server::Running) -> u64 {
    p.control.current().version
}

/// Steady client load in the background: `concurrency` keep-alive clients
/// sending GETs until stopped, or for at most `limit` (bounded either way).
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, concurrency: usize, limit: Duration) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..concurrency)
            .map(|i| {
                let (url, stop, ok, failed) =
                    (url.clone(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let c = client();
                    let until = std::time::Instant::now() + limit;
                    let mut n = 0u64;
                    while !stop.load(Relaxed) && std::time::Instant::now() < until {
                        let user = format!("u{i}-{n}");
                        n += 1;
                        let req = Request::get(&url)
                            .header("x-user-id", user)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                            Ok(Ok(r)) => {
                                let good = r.status().is_success();
                                let _ = r.into_body().collect().await;
                                if good { &ok } else { &failed }.fetch_add(1, Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Relaxed);
                            }
                        }
                        // A gentle rate: a few hundred requests a second in all.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.ok.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// GET a JSON document from the admin API.
pub async fn admin_json(p: &sluice::server::Running, path: &str) -> serde_json::Value {
    let (s, body) = get(&client(), &format!("http://{}{path}", p.admin_addr), &[]).await;
    assert_eq!(s, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The `rollout` object of a route in `/status`.
pub async fn rollout_status(p: &sluice::server::Running, route: &str) -> serde_json::Value {
    rollout_of(&admin_json(p, "/status").await, route)
}

/// The `rollout` object of a route in a `/status` document.
pub fn rollout_of(status: &serde_json::Value, route: &str) -> serde_json::Value {
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == route)
        .unwrap()["rollout"]
        .clone()
}

/// Polls `/status` every 25 ms until `ready` holds; panics with `what` and
/// the last status after `within`.
pub async fn wait_status(
    p: &sluice::server::Running,
    within: Duration,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let s = admin_json(p, "/status").await;
        if ready(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; now: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Like [`wait_status`], on the `rollout` object of one route.
pub async fn wait_rollout(
    p: &sluice::server::Running,
    route: &str,
    within: Duration,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let of_route = |s: &serde_json::Value| rollout_of(s, route);
    let s = wait_status(p, within, what, |s| ready(&of_route(s))).await;
    of_route(&s)
}

/// Waits until the route's rollout is in `state`.
pub async fn wait_state(
    p: &sluice::server::Running,
    route: &str,
    state: &str,
    within: Duration,
) -> serde_json::Value {
    wait_rollout(p, route, within, &format!("rollout state {state}"), |r| {
        r["state"] == state
    })
    .await
}

/// GET a text document (`/metrics`, a report) from the admin API.
pub async fn admin_text(p: &sluice::server::Running, path: &str) -> String {
    let (s, body) = get(&client(), &format!("http://{}{path}", p.admin_addr), &[]).await;
    assert_eq!(s, 200, "{path}: {body}");
    body
}

/// A route over stable and canary with a rollout plan; `plan` is indented
/// under `rollout:`.
pub fn rollout_yaml(stable: &Backend, canary: &Backend, plan: &str, extra_top: &str) -> String {
    let mut y = format!(
        "{extra_top}listeners: [{{ addr: \"127.0.0.1:0\" }}]\nadmin: {{ addr: \"127.0.0.1:0\" }}\nroutes:\n  - name: api\n    backends:\n      - {{ name: stable, url: \"{}\", weight: 100 }}\n      - {{ name: canary, url: \"{}\", weight: 0 }}\n    sticky: {{ header: x-user-id }}\n    rollout:\n      baseline: stable\n      canary: canary\n",
        stable.url(),
        canary.url()
    );
    for line in plan.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("      {line}\n"));
    }
    y
}

/// Reads a `sluice run --log-format json` child's log lines until it says
/// it is serving; returns its first proxy address and its admin address.
pub fn wait_serving<R: std::io::BufRead>(lines: &mut std::io::Lines<R>) -> (String, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(std::time::Instant::now() < deadline, "sluice did not start");
        let line = lines.next().expect("sluice exited before serving").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "sluice is serving" {
            let proxy = v["fields"]["proxy"].as_str().unwrap();
            let first = proxy.split(',').next().unwrap().to_string();
            return (first, v["fields"]["admin"].as_str().unwrap().to_string());
        }
    }
}
