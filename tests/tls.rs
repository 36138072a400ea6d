//! TLS: listeners (rustls termination with ALPN h2 and http/1.1), and
//! `https://` backends, whose certificates sluice checks.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;

struct Certs {
    _dir: tempfile::TempDir,
    cert_der: CertificateDer<'static>,
    base: std::path::PathBuf,
}

fn certs() -> Certs {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/server.crt"), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("tls/server.key"),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    Certs {
        base: dir.path().to_path_buf(),
        cert_der: ck.cert.der().clone(),
        _dir: dir,
    }
}

/// One GET over TLS, offering `alpn`; returns the negotiated protocol and body.
async fn get_tls(
    addr: std::net::SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> (Vec<u8>, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let negotiated = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let io = TokioIo::new(tls);
    let req = http::Request::builder()
        .uri("https://localhost/")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if negotiated == b"h2" {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        *req.version_mut() = http::Version::HTTP_2;
        req.headers_mut().remove("host");
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (negotiated, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_h2_and_http1_by_alpn() {
    let c = certs();
    let b = Backend::start("b").await;
    let yaml = route_yaml("", &[("b", b.url(), 1)]).replace(
        "  - addr: 127.0.0.1:0\nadmin",
        "  - addr: 127.0.0.1:0\n  - addr: 127.0.0.1:0\n    tls: { cert: tls/server.crt, key: tls/server.key }\nadmin",
    );
    let p = start_proxy_in(&yaml, &c.base).await;
    let tls_addr = p.proxy_addrs[1];
    let (proto, body) = get_tls(tls_addr, &c.cert_der, &[b"h2", b"http/1.1"]).await;
    assert_eq!((proto.as_slice(), who(&body)), (&b"h2"[..], "b"));
    let (proto, body) = get_tls(tls_addr, &c.cert_der, &[b"http/1.1"]).await;
    assert_eq!((proto.as_slice(), who(&body)), (&b"http/1.1"[..], "b"));
    let h = b.state.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(h["x-forwarded-proto"], "https");
    // The plain listener still serves plain HTTP.
    assert_eq!(
        who(
            &get(&client(), &format!("http://{}/", p.proxy_addrs[0]), &[])
                .await
                .1
        ),
        "b"
    );
    p.shutdown().await;
}

#[test]
fn unreadable_or_mismatched_tls_files_are_config_problems() {
    let c = certs();
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    std::fs::write(
        c.base.join("tls/other.key"),
        other.signing_key.serialize_pem(),
    )
    .unwrap();
    let doc = |cert: &str, key: &str| {
        format!(
            "listeners:\n  - addr: 127.0.0.1:0\n    tls: {{ cert: {cert}, key: {key} }}\nroutes:\n  - {{ name: a, backends: [{{ name: b, url: \"http://127.0.0.1:1\" }}] }}\n"
        )
    };
    for (cert, key, want) in [
        (
            "tls/missing.crt",
            "tls/server.key",
            "cannot read certificate",
        ),
        ("tls/server.crt", "tls/other.key", "do not fit"),
        ("tls/server.key", "tls/server.key", "no PEM certificate"),
    ] {
        let d =
            sluice::config::parse_document(&doc(cert, key), sluice::config::Syntax::Yaml).unwrap();
        let err = sluice::config::validate(d, &c.base)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("listeners[0].tls: ") && err.contains(want),
            "{cert}/{key}: {err}"
        );
    }
}

/// A private CA and a backend certificate it issued for `names`, in PEM:
/// (CA certificate, backend certificate, backend key).
fn issued(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A directory holding `ca.pem`, a private CA, and the certificate and key
/// (PEM) it issued for localhost.
fn private_ca() -> (tempfile::TempDir, String, String) {
    let (ca, cert, key) = issued(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
    (dir, cert, key)
}

/// A config with one route to `url`, the backend's `tls` section as given.
fn https_route(url: &str, tls: &str) -> String {
    format!(
        "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nadmin: {{ addr: \"127.0.0.1:0\" }}\nroutes:\n  - name: api\n    backends:\n      - {{ name: b, url: \"{url}\"{tls} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_is_reached_over_tls_its_certificate_checked_and_its_connections_reused() {
    let (dir, cert, key) = private_ca();
    let b = Backend::start_tls("secure", tls_acceptor(&cert, &key, None)).await;
    // The certificate names localhost; the URL gives the address.
    let yaml = https_route(&b.url(), ", tls: { ca: ca.pem, server_name: localhost }");
    // One worker: each keeps idle connections of its own.
    let doc = sluice::config::parse_document(&yaml, sluice::config::Syntax::Yaml).unwrap();
    let cfg = sluice::config::validate(doc, dir.path()).unwrap();
    let options = sluice::server::Options {
        base_dir: Some(dir.path().to_path_buf()),
        workers: Some(1),
        ..Default::default()
    };
    let p = sluice::server::start(cfg, options).await.unwrap();
    let c = client();
    let url = format!("http://{}/", p.proxy_addr());
    for _ in 0..20 {
        let (status, body) = get(&c, &url, &[]).await;
        assert_eq!((status.as_u16(), who(&body)), (200, "secure"));
    }
    // A body larger than the TLS layer buffers goes through to its end.
    let (status, _, body) = send(&c, "POST", &url, &[], vec![b'x'; 256 * 1024]).await;
    assert_eq!((status.as_u16(), who(&body)), (200, "secure"));
    assert_eq!(
        b.state
            .body_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        256 * 1024
    );
    // A weight change validates the route again but reads no file (here
    // the CA file is gone, as mid-rotation), and keeps the pool and its
    // connection.
    std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
    let (status, _, body) = send(
        &c,
        "PUT",
        &format!("http://{}/routes/api/weights", p.admin_addr),
        &[],
        r#"{"b": 7}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&c, &url, &[]).await;
    assert_eq!((status.as_u16(), who(&body)), (200, "secure"));
    // Sequential requests share one connection: an idle TLS connection
    // stays usable in the pool (a TLS 1.3 session ticket waiting on it
    // is no sign of a close).
    assert_eq!(
        b.state.accepted.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one TLS connection for every request"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_with_an_untrusted_or_misnamed_certificate_gets_no_request() {
    let (dir, cert, key) = private_ca();
    let b = Backend::start_tls("secure", tls_acceptor(&cert, &key, None)).await;
    for tls in [
        // The built-in public roots do not know the private CA.
        ", tls: { server_name: localhost }".to_string(),
        // Trusted issuer, but the certificate is not for this name.
        ", tls: { ca: ca.pem, server_name: other.test }".to_string(),
        // Nor for the address the URL gives.
        ", tls: { ca: ca.pem }".to_string(),
    ] {
        let p = start_proxy_in(&https_route(&b.url(), &tls), dir.path()).await;
        let (status, body) = get(&client(), &format!("http://{}/", p.proxy_addr()), &[]).await;
        assert_eq!(status.as_u16(), 502, "{tls}: {body}");
        p.shutdown().await;
    }
    assert_eq!(
        b.state.seen(),
        0,
        "no request crossed an unchecked connection"
    );
    assert!(
        b.state.accepted.load(std::sync::atomic::Ordering::Relaxed) >= 3,
        "a handshake was tried each time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_checks_reach_an_https_canary_over_tls_in_its_protocol() {
    let (dir, cert, key) = private_ca();
    let stable = Backend::start("stable").await;
    let canary = Backend::start_tls("canary", tls_acceptor(&cert, &key, None)).await;
    // The check expects a body the canary does not send: the rollback's
    // reason then shows the check got an answer over TLS, not a failed
    // handshake.
    let plan = "interval: 20ms\nwindow: 2s\nmin_requests: 20\nstages: [{ weight: 10, bake: 1h }]\nsmoke:\n  - { name: checkout works, path: /checkout, expect_status: 200, expect_body_contains: order-id }\n";
    for (protocol, version) in [("http1", "/checkout"), ("h2", "https://")] {
        let yaml = rollout_yaml(&stable, &canary, plan, "").replace(
            &format!("url: \"{}\", weight: 0 }}", canary.url()),
            &format!(
                "url: \"{}\", weight: 0, protocol: {protocol}, tls: {{ ca: ca.pem, server_name: localhost }} }}",
                canary.url()
            ),
        );
        assert!(yaml.contains("server_name: localhost"), "{yaml}");
        let p = start_proxy_in(&yaml, dir.path()).await;
        let r = wait_state(&p, "api", "rolled_back", Duration::from_secs(10)).await;
        let why = r["last_rollback"].as_str().unwrap();
        assert!(
            why.contains("smoke check \"checkout works\"") && why.contains("body does not contain"),
            "{protocol}: {r:#}"
        );
        // Origin form over HTTP/1.1, scheme and authority over HTTP/2.
        let target = canary.state.last_target.lock().unwrap().clone().unwrap();
        assert!(target.starts_with(version), "{protocol}: {target}");
        p.shutdown().await;
    }
}

#[test]
fn backend_tls_problems_are_named_by_their_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let check = |backend: &str| {
        let yaml = format!(
            "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nroutes:\n  - name: a\n    backends:\n      - {backend}\n"
        );
        let d = sluice::config::parse_document(&yaml, sluice::config::Syntax::Yaml)
            .map_err(|e| e.to_string())?;
        sluice::config::validate(d, dir.path())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for (backend, want) in [
        (
            "{ name: b, url: \"http://127.0.0.1:1\", tls: { ca: ca.pem } }",
            "routes[0].backends[0].tls: applies to https:// backends only",
        ),
        (
            "{ name: b, url: \"https://127.0.0.1:1\", protocol: h2c }",
            "routes[0].backends[0].protocol: h2c is cleartext HTTP/2; for HTTP/2 over TLS to an https:// backend, say h2",
        ),
        (
            "{ name: b, url: \"https://127.0.0.1:1\", tls: { ca: missing.pem } }",
            "routes[0].backends[0].tls.ca: cannot read",
        ),
        (
            "{ name: b, url: \"https://127.0.0.1:1\", tls: { ca: empty.pem } }",
            "holds no PEM certificate",
        ),
        (
            "{ name: b, url: \"https://127.0.0.1:1\", tls: { server_name: \"not a name\" } }",
            "routes[0].backends[0].tls.server_name: \"not a name\" is not a DNS name or an IP address",
        ),
        (
            "{ name: b, url: \"ftp://127.0.0.1:1\" }",
            "must start with http:// or https://",
        ),
        (
            "{ name: b, url: \"https://127.0.0.1:1\", tls: { ca: ca.pem, verify: false } }",
            "routes[0].backends[0].tls.verify: unknown field `verify`",
        ),
    ] {
        let err = check(backend).unwrap_err();
        assert!(err.contains(want), "{backend}: {err}");
    }
    // The public roots by default, port 443 by default; h2 over TLS, or
    // with prior knowledge on a plain backend.
    check("{ name: b, url: \"https://api.example.com\" }").unwrap();
    check("{ name: b, url: \"https://api.example.com\", protocol: h2 }").unwrap();
    check("{ name: b, url: \"http://127.0.0.1:1\", protocol: h2 }").unwrap();
    let d = sluice::config::parse_document(
        "listeners: [{ addr: \"127.0.0.1:0\" }]\nroutes:\n  - { name: a, backends: [{ name: b, url: \"https://api.example.com\" }] }\n",
        sluice::config::Syntax::Yaml,
    )
    .unwrap();
    let cfg = sluice::config::validate(d, dir.path()).unwrap();
    let target = &cfg.routes[0].backends[0].target;
    assert_eq!(target.authority.as_str(), "api.example.com:443");
    assert_eq!(
        target.tls.as_ref().unwrap().server_name.to_str(),
        "api.example.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_the_backend_closed_is_not_used_again() {
    let (dir, cert, key) = private_ca();
    // A TLS backend that closes a connection (close_notify, then FIN) when
    // no request head starts on it within 100 ms.
    let acceptor = tls_acceptor(&cert, &key, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"short-lived\n"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(100))
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let url = format!("https://{addr}");
    let yaml = https_route(&url, ", tls: { ca: ca.pem, server_name: localhost }");
    let p = start_proxy_in(&yaml, dir.path()).await;
    let c = client();
    let proxy = format!("http://{}/", p.proxy_addr());
    // POST: were a closed connection taken from the pool, the request
    // could not go again on a new one (it is not idempotent) and would get
    // 502; it must be left behind at checkout.
    for _ in 0..3 {
        let (status, _, body) = send(&c, "POST", &proxy, &[], "order").await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "short-lived\n"));
        // Long enough for the backend to close the idle connection.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "a new connection after each close"
    );
    server.abort();
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let (dir, cert, key) = private_ca();
    // sluice's identity, from a CA of the backend's own.
    let (client_ca, client_cert, client_key) = issued(&["sluice.test"]);
    std::fs::write(dir.path().join("client.crt"), &client_cert).unwrap();
    std::fs::write(dir.path().join("client.key"), &client_key).unwrap();
    let b = Backend::start_tls("mutual", tls_acceptor(&cert, &key, Some(&client_ca))).await;
    let with = ", tls: { ca: ca.pem, server_name: localhost, cert: client.crt, key: client.key }";
    let p = start_proxy_in(&https_route(&b.url(), with), dir.path()).await;
    let (status, body) = get(&client(), &format!("http://{}/", p.proxy_addr()), &[]).await;
    assert_eq!((status.as_u16(), who(&body)), (200, "mutual"));
    p.shutdown().await;
    // Without one, the backend refuses the connection: 502, no request.
    let without = ", tls: { ca: ca.pem, server_name: localhost }";
    let p = start_proxy_in(&https_route(&b.url(), without), dir.path()).await;
    let (status, body) = get(&client(), &format!("http://{}/", p.proxy_addr()), &[]).await;
    assert_eq!(status.as_u16(), 502, "{body}");
    assert_eq!(b.state.seen(), 1);
    p.shutdown().await;
}

#[test]
fn a_client_certificate_needs_its_own_key() {
    let (dir, cert, key) = private_ca();
    let (_, other_cert, _) = issued(&["other.test"]);
    std::fs::write(dir.path().join("client.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("client.key"), &key).unwrap();
    std::fs::write(dir.path().join("other.crt"), &other_cert).unwrap();
    let problem = |tls: &str| {
        let d = sluice::config::parse_document(
            &https_route("https://127.0.0.1:1", tls),
            sluice::config::Syntax::Yaml,
        )
        .unwrap();
        sluice::config::validate(d, dir.path())
            .unwrap_err()
            .to_string()
    };
    // Every problem at once: a missing CA file hides none of the others.
    let err = problem(", tls: { ca: missing.pem, cert: client.crt }");
    assert!(
        err.contains("routes[0].backends[0].tls.ca: cannot read")
            && err.contains("routes[0].backends[0].tls: cert and key go together"),
        "{err}"
    );
    let err = problem(", tls: { cert: client.crt }");
    assert!(
        err.contains("routes[0].backends[0].tls: cert and key go together"),
        "{err}"
    );
    let err = problem(", tls: { cert: other.crt, key: client.key }");
    assert!(
        err.contains(
            "routes[0].backends[0].tls.key: the client certificate and its key do not fit"
        ),
        "{err}"
    );
    let err = problem(", tls: { cert: client.crt, key: missing.key }");
    assert!(
        err.contains("routes[0].backends[0].tls.key: cannot read private key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_speaks_http2_when_it_agrees_to_it_by_alpn() {
    let (dir, cert, key) = private_ca();
    let b = Backend::start_tls("grpc", tls_acceptor(&cert, &key, None)).await;
    let tls = ", protocol: h2, tls: { ca: ca.pem, server_name: localhost }";
    let p = start_proxy_in(&https_route(&b.url(), tls), dir.path()).await;
    let url = format!("http://{}/svc/Method", p.proxy_addr());
    for c in [client(), h2_client()] {
        let (status, body) = get(&c, &url, &[]).await;
        assert_eq!((status.as_u16(), who(&body)), (200, "grpc"));
        // HTTP/2 carries scheme and authority: the request arrived as
        // HTTP/2 over TLS, not in HTTP/1.1's origin form.
        let target = b.state.last_target.lock().unwrap().clone().unwrap();
        assert_eq!(target, format!("https://{}/svc/Method", p.proxy_addr()));
    }
    let opened = b.state.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections: one multiplexed connection per worker"
    );
    p.shutdown().await;
    // A backend that agrees to no protocol by ALPN gets no HTTP/2 preface
    // (this one would even have taken it: it serves HTTP/2 by preface).
    let h1 = Backend::start_tls("h1", tls_acceptor_offering(&cert, &key, None, &[])).await;
    let p = start_proxy_in(&https_route(&h1.url(), tls), dir.path()).await;
    let (status, body) = get(&client(), &format!("http://{}/", p.proxy_addr()), &[]).await;
    assert_eq!(status.as_u16(), 502, "{body}");
    assert_eq!(h1.state.seen(), 0);
    assert!(h1.state.accepted.load(std::sync::atomic::Ordering::Relaxed) > 0);
    p.shutdown().await;
}
