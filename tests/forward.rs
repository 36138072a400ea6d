//! Forwarding as a proxy should: headers, bodies, protocols, failures,
//! limits and inline metrics, against real backends.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one(name: &str, url: String) -> String {
    route_yaml(
        "override_header: x-sluice-backend",
        &[(Box::leak(name.to_string().into_boxed_str()), url, 1)],
    )
}

/// One backend behind a proxy with the given `limits:` block.
fn limited(b: &Backend, limits: &str) -> String {
    one(b.name, b.url()).replace("routes:", &format!("limits: {limits}\nroutes:"))
}

/// A proxy with one listener, the admin API and these route lines.
async fn start_with_routes(routes: &str) -> sluice::server::Running {
    start_proxy(&format!(
        "listeners: [{{ addr: 127.0.0.1:0 }}]\nadmin: {{ addr: 127.0.0.1:0 }}\nroutes:\n{routes}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_cleaned_and_forwarded_for_is_set() {
    let b = Backend::start("b").await;
    let p = start_proxy(&one("b", b.url())).await;
    let c = client();
    let (s, _) = get(
        &c,
        &format!("http://{}/path?q=1", p.proxy_addr()),
        &[
            ("host", "shop.test"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic xyz"),
            ("x-forwarded-for", "203.0.113.7"),
            ("te", "trailers"),
            ("x-app", "kept"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b.state.last_target.lock().unwrap().as_deref(),
        Some("/path?q=1"),
        "HTTP/1.1 backends get the origin form"
    );
    let h = b.state.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(
        h["host"], "shop.test",
        "the client's Host reaches the backend"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-app"], "kept");
    assert_eq!(h["te"], "trailers");
    for gone in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} must not cross the proxy");
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let b = Backend::start("b").await;
    let p = start_proxy(&one("b", b.url())).await;
    let c = client();
    let big = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    let (s, _, body) = send(
        &c,
        "POST",
        &format!("http://{}/upload", p.proxy_addr()),
        &[],
        big,
    )
    .await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "b 3145728"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_from_clients_and_to_backends() {
    let h1 = Backend::start("h1").await;
    let h2 = Backend::start_h2c("h2").await;
    let routes = format!(
        "\
  - {{ name: grpc, match: {{ path_prefix: /grpc }}, backends: [{{ name: h2, url: \"{}\", protocol: h2c }}] }}\n\
  - {{ name: web, backends: [{{ name: h1, url: \"{}\" }}] }}\n",
        h2.url(), h1.url()
    );
    // Two workers, whatever the machine: each keeps one connection to the
    // h2c backend.
    let yaml = format!(
        "listeners: [{{ addr: 127.0.0.1:0 }}]\nadmin: {{ addr: 127.0.0.1:0 }}\nroutes:\n{routes}"
    );
    let doc = sluice::config::parse_document(&yaml, sluice::config::Syntax::Yaml).unwrap();
    let cfg = sluice::config::validate(doc, std::path::Path::new(".")).unwrap();
    let options = sluice::server::Options {
        workers: Some(2),
        ..Default::default()
    };
    let p = sluice::server::start(cfg, options).await.unwrap();
    for c in [client(), h2_client()] {
        let base = format!("http://{}", p.proxy_addr());
        assert_eq!(
            who(&get(&c, &format!("{base}/grpc/x?a=1"), &[]).await.1),
            "h2"
        );
        assert_eq!(who(&get(&c, &format!("{base}/?a=1"), &[]).await.1), "h1");
        // Whatever the client spoke: origin form to HTTP/1.1, and scheme,
        // authority and path to HTTP/2.
        let target = |b: &Backend| b.state.last_target.lock().unwrap().clone().unwrap();
        assert_eq!(target(&h1), "/?a=1");
        // An HTTP/2 client's :authority reaches an HTTP/1.1 backend as host.
        let h = h1.state.last_headers.lock().unwrap().clone().unwrap();
        let hosts: Vec<_> = h.get_all("host").iter().collect();
        assert_eq!(hosts, [p.proxy_addr().to_string().as_str()]);
        // An h2c backend gets the authority the client asked for as
        // `:authority` (the proxy's address here), and no `host` field.
        assert_eq!(target(&h2), format!("http://{}/grpc/x?a=1", p.proxy_addr()));
        let h = h2.state.last_headers.lock().unwrap().clone().unwrap();
        assert!(h.get("host").is_none(), "{h:?}");
    }
    // A virtual host reaches it whole, port and all, and all of them share
    // a worker's one connection: twelve requests from new client
    // connections (spread over both workers) open at most two.
    let url = format!("http://{}/grpc/v", p.proxy_addr());
    for host in ["api.test", "api.test:8443", "other.test"].repeat(4) {
        let (status, _) = get(&client(), &url, &[("host", host)]).await;
        assert_eq!(status, 200);
        let target = h2.state.last_target.lock().unwrap().clone().unwrap();
        assert_eq!(target, format!("http://{host}/grpc/v"));
    }
    let opened = h2.state.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections for 2 workers"
    );
    p.shutdown().await;
}

/// An h2c backend that closes each connection (GOAWAY) after its first
/// request, as a backend does when it restarts or caps requests per
/// connection. Counts the connections it accepted.
async fn h2c_one_request_per_connection() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::Ordering::Relaxed;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let answered = std::sync::Arc::new(tokio::sync::Notify::new());
                let notify = answered.clone();
                let service = hyper::service::service_fn(move |_req| {
                    notify.notify_one();
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"once")),
                        ))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = answered.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_backend_closing_its_connections_is_reconnected_to() {
    let (addr, accepted, task) = h2c_one_request_per_connection().await;
    let p = start_with_routes(&format!(
        "  - {{ name: grpc, backends: [{{ name: h2, url: \"http://{addr}\", protocol: h2c }}] }}\n"
    ))
    .await;
    let url = format!("http://{}/", p.proxy_addr());
    let c = client();
    for i in 0..12 {
        let (status, body) = get(&c, &url, &[]).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "once"),
            "request {i}"
        );
    }
    // Each answer is followed by the backend's GOAWAY; a request that
    // reaches the connection before its second GOAWAY (RFC 9113, 6.8) is
    // still served on it, so connections may carry more than one.
    let opened = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (4..=12).contains(&opened),
        "{opened} connections for 12 requests"
    );
    p.shutdown().await;
    task.abort();
}

/// A backend that answers after 2 s, longer than any route timeout here.
async fn slow_backend() -> Backend {
    let slow = Backend::start("slow").await;
    slow.state
        .delay_ms
        .store(2_000, std::sync::atomic::Ordering::Relaxed);
    slow
}

async fn status_of(url: String) -> (u16, String) {
    let (s, b) = get(&client(), &url, &[]).await;
    (s.as_u16(), b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_backends_give_502_and_slow_ones_504() {
    let refused = closed_port().await;
    let (reset, _t1) = start_broken(false).await;
    let (garbage, _t2) = start_broken(true).await;
    let slow = slow_backend().await;
    let routes = format!(
        "\
  - {{ name: refused, match: {{ path_prefix: /refused }}, backends: [{{ name: x, url: \"http://{refused}\" }}] }}\n\
  - {{ name: reset, match: {{ path_prefix: /reset }}, backends: [{{ name: x, url: \"http://{reset}\" }}] }}\n\
  - {{ name: garbage, match: {{ path_prefix: /garbage }}, backends: [{{ name: x, url: \"http://{garbage}\" }}] }}\n\
  - {{ name: slow, timeout: 200ms, backends: [{{ name: x, url: \"{}\" }}] }}\n",
        slow.url()
    );
    let p = start_with_routes(&routes).await;
    let base = format!("http://{}", p.proxy_addr());
    for path in ["refused", "reset", "garbage"] {
        let (s, body) = status_of(format!("{base}/{path}")).await;
        assert_eq!(s, 502, "/{path}: {body}");
    }
    let started = Instant::now();
    let (s, _) = status_of(format!("{base}/slow")).await;
    assert_eq!(s, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "the route timeout must fire"
    );
    // Every one of them counts as an error of its backend, never as 4xx.
    let m = admin_text(&p, "/metrics").await;
    for route in ["refused", "reset", "garbage", "slow"] {
        assert_eq!(
            metric(
                &m,
                "sluice_requests_total",
                &[("route", route), ("class", "error")]
            ),
            1.0,
            "{route}"
        );
    }
    p.shutdown().await;
}

/// A connection keeps its requests' route-timeout timers for the next
/// ones: a kept timer moved earlier, moved later, or already fired while
/// the connection idled must each time fire at the new request's own
/// deadline, never before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_hold_across_requests_on_one_connection() {
    let fast = Backend::start("fast").await;
    let slow = slow_backend().await;
    let routes = format!(
        "\
  - {{ name: long, timeout: 5s, match: {{ path_prefix: /long }}, backends: [{{ name: x, url: \"{f}\" }}] }}\n\
  - {{ name: short, timeout: 300ms, match: {{ path_prefix: /short }}, backends: [{{ name: x, url: \"{f}\" }}] }}\n\
  - {{ name: brisk, timeout: 150ms, match: {{ path_prefix: /brisk }}, backends: [{{ name: x, url: \"{f}\" }}] }}\n\
  - {{ name: slow, timeout: 300ms, backends: [{{ name: x, url: \"{s}\" }}] }}\n",
        f = fast.url(),
        s = slow.url()
    );
    let p = start_with_routes(&routes).await;
    let base = format!("http://{}", p.proxy_addr());
    for (proto, c) in [("h1", client()), ("h2", h2_client())] {
        let status = |path: &str| {
            let (c, url) = (c.clone(), format!("{base}{path}"));
            async move {
                let started = Instant::now();
                let s = get(&c, &url, &[]).await.0.as_u16();
                (s, started.elapsed())
            }
        };
        // A kept timer due in 5 s, moved earlier for a slow request.
        assert_eq!(status("/long").await.0, 200, "{proto}");
        let (s, took) = status("/slow").await;
        assert_eq!(s, 504, "{proto}");
        assert!(took < Duration::from_millis(1_500), "{proto}: {took:?}");
        // A kept timer due 150 ms after the last request, the next one's
        // deadline 300 ms after it: the early firing must not count as the
        // timeout.
        assert_eq!(status("/brisk").await.0, 200, "{proto}");
        let (s, took) = status("/slow").await;
        assert_eq!(s, 504, "{proto}");
        assert!(took >= Duration::from_millis(300), "{proto}: {took:?}");
        assert!(took < Duration::from_millis(1_500), "{proto}: {took:?}");
        // A kept timer that fired while the connection idled (for less
        // than the 250 ms after which an idle connection parks and drops
        // its timers) is armed again, for a later deadline.
        assert_eq!(status("/brisk").await.0, 200, "{proto}");
        tokio::time::sleep(Duration::from_millis(220)).await;
        for _ in 0..3 {
            assert_eq!(status("/brisk").await.0, 200, "{proto}");
        }
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_count_what_backends_saw() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    canary
        .state
        .fail_every
        .store(4, std::sync::atomic::Ordering::Relaxed);
    let p = start_proxy(&route_yaml(
        "",
        &[("stable", stable.url(), 50), ("canary", canary.url(), 50)],
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", p.proxy_addr());
    for _ in 0..400 {
        get(&c, &url, &[]).await;
    }
    let m = get(&c, &format!("http://{}/metrics", p.admin_addr), &[])
        .await
        .1;
    for b in [&stable, &canary] {
        let l = |class| {
            metric(
                &m,
                "sluice_requests_total",
                &[("backend", b.name), ("class", class)],
            )
        };
        assert_eq!(l("2xx") as u64, b.state.count(200), "{} 2xx", b.name);
        assert_eq!(l("5xx") as u64, b.state.count(500), "{} 5xx", b.name);
        assert_eq!(
            metric(
                &m,
                "sluice_request_duration_seconds_count",
                &[("backend", b.name)]
            ) as u64,
            b.state.seen(),
            "{} histogram count",
            b.name
        );
    }
    assert!(canary.state.count(500) > 0);
    let status: serde_json::Value = serde_json::from_str(
        &get(&c, &format!("http://{}/status", p.admin_addr), &[])
            .await
            .1,
    )
    .unwrap();
    let backends = status["routes"][0]["backends"].as_array().unwrap();
    let can = backends.iter().find(|b| b["name"] == "canary").unwrap();
    assert_eq!(can["requests"].as_u64().unwrap(), canary.state.seen());
    let expected = 100.0 * (1.0 - canary.state.count(500) as f64 / canary.state.seen() as f64);
    assert!((can["success_rate"].as_f64().unwrap() - expected).abs() < 0.01);
    assert!(can["p99_ms"].as_f64().unwrap() > 0.0);
    p.shutdown().await;
}

/// Reads one whole HTTP/1.1 response with a Content-Length (head and body
/// may arrive in separate segments).
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the whole response: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host_over_the_host_field() {
    let shop = Backend::start("shop").await;
    let other = Backend::start("other").await;
    let routes = format!(
        "\
  - {{ name: shop, match: {{ host: shop.test }}, backends: [{{ name: shop, url: \"{}\" }}] }}\n\
  - {{ name: other, match: {{ host: other.test }}, backends: [{{ name: other, url: \"{}\" }}] }}\n",
        shop.url(),
        other.url()
    );
    let p = start_with_routes(&routes).await;
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
    s.write_all(b"GET http://user@Shop.test:8080/abs?x=1 HTTP/1.1\r\nhost: other.test\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(who(&answer[answer.find("\r\n\r\n").unwrap() + 4..]), "shop");
    assert_eq!(
        other.state.seen.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        shop.state.last_target.lock().unwrap().as_deref(),
        Some("/abs?x=1")
    );
    let h = shop.state.last_headers.lock().unwrap().clone().unwrap();
    let hosts: Vec<_> = h.get_all("host").iter().collect();
    assert_eq!(
        hosts,
        ["Shop.test:8080"],
        "the target's host, not the field"
    );
    let two_hosts = raw(
        p.proxy_addr(),
        b"GET http://shop.test/ HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    p.shutdown().await;
}

/// A keep-alive connection that has been answered once.
async fn after_one_request(p: &sluice::server::Running) -> TcpStream {
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    s
}

/// Sends raw bytes and returns whatever comes back before the server closes
/// or 3 s pass.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fire() {
    let b = Backend::start("b").await;
    let yaml = limited(&b, "{ max_header_bytes: 8192, max_body_bytes: 1000, header_read_timeout: 300ms, idle_timeout: 400ms }");
    let p = start_proxy(&yaml).await;
    let addr = p.proxy_addr();
    let c = client();
    let base = format!("http://{addr}");

    let huge = "x".repeat(10_000);
    let (s, _) = get(&c, &format!("{base}/"), &[("x-big", &huge)]).await;
    assert_eq!(s, 431);

    let (s, _, _) = send(&c, "POST", &format!("{base}/"), &[], vec![1u8; 1001]).await;
    assert_eq!(s, 413, "declared length over the limit");
    // A streamed body with no declared length is cut when it passes the limit.
    let mut req =
        b"POST / HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"1f4\r\n");
        req.extend_from_slice(&[b'a'; 500]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(addr, &req).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let (s, _, _) = send(&c, "POST", &format!("{base}/"), &[], vec![1u8; 1000]).await;
    assert_eq!(s, 200, "a body at the limit passes");

    let no_host = raw(addr, b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let two_hosts = raw(
        addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");

    // A client that starts a request and stalls is cut off.
    let started = Instant::now();
    let stalled = raw(addr, b"GET / HTTP/1.1\r\nhost: a\r\n").await;
    let took = started.elapsed();
    assert!(stalled.is_empty() || !stalled.contains("200"), "{stalled}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2_500),
        "closed after {took:?}"
    );

    // An idle keep-alive connection is closed after the idle timeout, not
    // after the (shorter) header read timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut buf = vec![0u8; 4096];
    let idle_from = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the idle connection should be closed"
    );
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(350),
        "closed too early: {idle:?}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_requests_get_404() {
    let b = Backend::start("b").await;
    let routes = format!(
        "\
  - {{ name: only, match: {{ path_prefix: /api }}, backends: [{{ name: b, url: \"{}\" }}] }}\n",
        b.url()
    );
    let p = start_with_routes(&routes).await;
    let (s, body) = status_of(format!("http://{}/other", p.proxy_addr())).await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(b.state.seen(), 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_new_clients_until_one_leaves() {
    let b = Backend::start("b").await;
    let yaml = limited(&b, "{ max_connections: 2 }");
    let p = start_proxy(&yaml).await;
    let addr = p.proxy_addr();
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection must wait while two are open"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_accept_in_time_gives_504() {
    // A listener that never accepts, with its backlog filled: the kernel
    // drops further SYNs, so a new connection neither succeeds nor fails.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let yaml = one("x", format!("http://{addr}"))
        .replace("routes:", "limits: { connect_timeout: 300ms }\nroutes:");
    let p = start_proxy(&yaml).await;
    let started = Instant::now();
    let (s, body) = status_of(format!("http://{}/", p.proxy_addr())).await;
    assert_eq!(s, 504, "{body}");
    assert!(
        body.contains("did not accept a connection in time"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    p.shutdown().await;
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_second_request_on_a_keep_alive_connection_is_cut_off() {
    let b = Backend::start("b").await;
    let yaml = limited(&b, "{ header_read_timeout: 300ms, idle_timeout: 10s }");
    let p = start_proxy(&yaml).await;
    let mut s = after_one_request(&p).await;
    // The next request starts and stalls: cut off long before the idle timeout.
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_500), "closed after {took:?}");
    p.shutdown().await;
}

/// Waits until `/status` counts `want` parked connections.
async fn wait_parked(p: &sluice::server::Running, want: u64) {
    wait_status(p, Duration::from_secs(3), &format!("{want} parked"), |s| {
        s["connections"]["parked"] == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_park_and_wake_on_their_next_request() {
    let b = Backend::start("b").await;
    let yaml = limited(&b, "{ idle_timeout: 2s }");
    let p = start_proxy(&yaml).await;
    let mut s = after_one_request(&p).await;
    wait_parked(&p, 1).await;
    let metrics = admin_text(&p, "/metrics").await;
    assert_eq!(
        metric(&metrics, "sluice_connections", &[("state", "parked")]),
        1.0
    );
    assert!(metric(&metrics, "sluice_connections", &[("state", "open")]) >= 1.0);

    // A head split across writes wakes the parked connection.
    s.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"st: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    wait_parked(&p, 1).await;

    // Two pipelined requests in one write, then a body: all answered in order.
    s.write_all(b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 8192];
    while got.matches("HTTP/1.1 200").count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    wait_parked(&p, 1).await;
    s.write_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert_eq!(b.state.seen(), 5);

    // Parked or not, the idle timeout closes it.
    wait_parked(&p, 1).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    wait_parked(&p, 0).await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_left_unread_is_never_read_as_the_next_request() {
    let b = Backend::start("b").await;
    let yaml = limited(&b, "{ max_body_bytes: 10 }");
    let p = start_proxy(&yaml).await;
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
    // Refused before its body is read; the body looks like a request.
    let inner = "GET /smuggled HTTP/1.1\r\nhost: a\r\nx-mark-smuggled: 1\r\n\r\n";
    s.write_all(
        format!(
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{inner}",
            inner.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 413"));
    // Past the park delay: the connection either closed or still serves
    // proper requests; the body never reached the backend as a request.
    tokio::time::sleep(sluice::proxy::http1::PARK_AFTER * 2).await;
    if s.write_all(b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .is_ok()
    {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.is_empty() || out.matches("HTTP/1.1").count() == 1,
            "{out}"
        );
    }
    assert_eq!(
        b.state.marked("x-mark-smuggled"),
        0,
        "the body was served as a request"
    );
    p.shutdown().await;
}

/// A client connection that has sent `GET /slow` through the proxy, and
/// the backend's side of the exchange once the request head has arrived
/// there, for the test to answer or hold; every step bounded.
async fn held_request(
    p: &sluice::server::Running,
    listener: &tokio::net::TcpListener,
) -> (TcpStream, TcpStream) {
    let mut client = TcpStream::connect(p.proxy_addr()).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    (client, accept_one_request(listener).await)
}

/// A backend that takes one connection and reads one request head from it.
async fn accept_one_request(listener: &tokio::net::TcpListener) -> TcpStream {
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the proxy connects to the backend")
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the request head arrives")
            .unwrap();
        assert!(n > 0, "the proxy closed before sending the whole head");
        head.extend_from_slice(&buf[..n]);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_request_ends_the_backend_exchange() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = start_proxy(&one(
        "held",
        format!("http://{}", listener.local_addr().unwrap()),
    ))
    .await;

    // A client that stays: its slow request is not cut by the looks that
    // check for clients gone (one every 250 ms), and gets its answer.
    let (mut stays, mut backend) = held_request(&p, &listener).await;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), backend.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the proxy gave up a request whose client is still there: {early:?}"
    );
    backend
        .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 4\r\n\r\nlate")
        .await
        .unwrap();
    let answer = read_response(&mut stays).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("late"), "{answer}");

    // (The backend closed that connection, so the next request opens one.)
    // A client that leaves while the backend works: the backend sees its
    // connection closed soon after, as with nginx, not at the route timeout.
    let (leaves, mut backend) = held_request(&p, &listener).await;
    drop(leaves);
    let closed = tokio::time::timeout(Duration::from_secs(3), backend.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the backend exchange outlived its client: {closed:?}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_access_log_line_and_the_log_stays_put() {
    let b = Backend::start("stable").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let yaml = format!(
        "access_log: {{ path: logs/access.log }}\n{}",
        route_yaml("match: { path_prefix: /shop }", &[("stable", b.url(), 1)])
    );
    let p = start_proxy_in(&yaml, dir.path()).await;
    let base = format!("http://{}", p.proxy_addr());
    let (s, _) = get(
        &client(),
        &format!("{base}/shop/orders?id=7"),
        &[("host", "api.test")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = get(
        &client(),
        &format!("{base}/elsewhere"),
        &[("host", "api.test")],
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = send(
        &h2_client(),
        "POST",
        &format!("{base}/shop/pay"),
        &[("host", "api.test")],
        "x",
    )
    .await;
    assert_eq!(s, 200);
    let file = dir.path().join("logs/access.log");
    let mut lines = Vec::new();
    eventually(Duration::from_secs(5), "three access log lines", || {
        lines = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        lines.len() == 3
    })
    .await;
    let field = |i: usize, k: &str| lines[i][k].clone();
    assert_eq!(field(0, "method"), "GET");
    assert_eq!(field(0, "host"), "api.test");
    assert_eq!(field(0, "path"), "/shop/orders?id=7");
    assert_eq!(field(0, "protocol"), "HTTP/1.1");
    assert_eq!(field(0, "status"), 200);
    assert_eq!(field(0, "route"), "api");
    assert_eq!(field(0, "backend"), "stable");
    assert_eq!(field(0, "client"), "127.0.0.1");
    assert!(field(0, "latency_ms").as_f64().unwrap() > 0.0);
    assert!(field(0, "time").as_str().unwrap().ends_with('Z'));
    // No route: logged, with none named.
    assert_eq!(field(1, "status"), 404);
    assert!(field(1, "route").is_null() && field(1, "backend").is_null());
    assert_eq!(
        (field(2, "method"), field(2, "protocol"), field(2, "status")),
        ("POST".into(), "HTTP/2".into(), 200.into())
    );
    // Fixed while running: a change is refused, naming it; a whole new
    // config that leaves it out keeps it.
    let admin = format!("http://{}/config", p.admin_addr);
    let moved = yaml.replace("logs/access.log", "logs/other.log");
    let (s, _, answer) = send(&client(), "PUT", &admin, &[], moved).await;
    assert_eq!(s, 422, "{answer}");
    assert!(answer.contains("access_log"), "{answer}");
    let routes_only = route_yaml("match: { path_prefix: /shop }", &[("stable", b.url(), 2)]);
    let (s, _, answer) = send(&client(), "PUT", &admin, &[], routes_only).await;
    assert_eq!(s, 200, "{answer}");
    let (s, _) = get(&client(), &format!("{base}/shop/again"), &[]).await;
    assert_eq!(s, 200);
    // Shutdown writes the last lines before it returns.
    p.shutdown().await;
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written.lines().count(), 4, "{written}");
    assert!(written.ends_with("}\n"));
}

#[test]
fn an_access_log_needs_a_directory_that_exists() {
    let dir = tempfile::tempdir().unwrap();
    let doc = |path: &str| {
        let yaml = format!(
            "access_log: {{ path: \"{path}\" }}\nlisteners: [{{ addr: \"127.0.0.1:0\" }}]\nroutes:\n  - {{ name: a, backends: [{{ name: b, url: \"http://127.0.0.1:1\" }}] }}\n"
        );
        let d = sluice::config::parse_document(&yaml, sluice::config::Syntax::Yaml).unwrap();
        sluice::config::validate(d, dir.path())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = doc("missing/access.log").unwrap_err();
    assert!(
        err.starts_with("access_log.path: ") && err.contains("is not a directory"),
        "{err}"
    );
    let err = doc(".").unwrap_err();
    assert!(err.contains("must name a file"), "{err}");
    doc("access.log").unwrap();
    doc("-").unwrap();
    assert!(
        !dir.path().join("access.log").exists(),
        "a check opens nothing"
    );
}

/// A backend whose answers to `/together` wait until `n` requests are
/// there at once (503 if they never are, after 5 s), and whose answers to
/// anything else take 300 ms. Counts requests seen.
async fn start_gathering(
    n: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (barrier, counter) = (barrier.clone(), counter.clone());
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let (barrier, counter) = (barrier.clone(), counter.clone());
                async move {
                    counter.fetch_add(1, Relaxed);
                    let status = if req.uri().path() == "/together" {
                        match tokio::time::timeout(Duration::from_secs(5), barrier.wait()).await {
                            Ok(_) => 200,
                            Err(_) => 503,
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        200
                    };
                    let mut r =
                        http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")));
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen, task)
}

/// An HTTP/2 client's streams on one connection reach the backend together
/// (the connection's task runs them side by side), and a drain waits for
/// the ones in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connections_streams_run_together_and_are_drained() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::Ordering::Relaxed;
    const N: usize = 8;
    let (addr, seen, backend) = start_gathering(N).await;
    let p = start_with_routes(&format!(
        "  - {{ name: r, backends: [{{ name: b, url: \"http://{addr}\" }}] }}\n"
    ))
    .await;
    let io = TcpStream::connect(p.proxy_addr()).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    let client_conn = tokio::spawn(conn);
    let request = |path: &str| {
        let mut sender = sender.clone();
        let req = http::Request::get(format!("http://{}{path}", p.proxy_addr()))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status().as_u16()) })
    };
    let together: Vec<_> = (0..N).map(|_| request("/together")).collect();
    for r in together {
        assert_eq!(
            r.await.unwrap().unwrap(),
            200,
            "every stream reached the backend at once"
        );
    }

    let slow: Vec<_> = (0..4).map(|_| request("/slow")).collect();
    eventually(
        Duration::from_secs(5),
        "the slow requests reach the backend",
        || seen.load(Relaxed) == N as u64 + 4,
    )
    .await;
    let drained = tokio::spawn(p.shutdown());
    for r in slow {
        assert_eq!(
            r.await.unwrap().unwrap(),
            200,
            "a stream in flight at shutdown is answered"
        );
    }
    assert!(
        drained.await.unwrap(),
        "the drain saw every connection close"
    );
    client_conn.abort();
    backend.abort();
}
