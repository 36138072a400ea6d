//! TLS listeners: rustls termination with ALPN h2 and http/1.1.

mod support;

use std::sync::Arc;

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
