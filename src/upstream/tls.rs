//! TLS to `https://` backends: the client configuration validation builds,
//! and the stream a backend connection reads and writes, plain or TLS.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// A client configuration that trusts `ca`, or the built-in public roots
/// (Mozilla's, compiled in: a container image without a system store
/// still checks public certificates) when `ca` is empty, and presents
/// `identity` (a certificate chain and its key) to a backend that asks
/// for one. Offers `alpn` alone (`http/1.1` or `h2`): sluice speaks one
/// protocol to a backend. The error says which of `ca` and `key` is wrong.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let mut roots = RootCertStore::empty();
    if ca.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for (i, cert) in ca.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                (
                    "ca",
                    format!("certificate {} is not a usable trust root: {e}", i + 1),
                )
            })?;
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ("ca", e.to_string()))?
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            (
                "key",
                format!("the client certificate and its key do not fit: {e}"),
            )
        })?,
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// A backend connection's transport: plain (`Left`) or TLS (`Right`;
/// boxed, the TLS state is large and most backends are plain).
/// tokio-util's `Either` reads and writes through to whichever it holds.
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Whether a connection that sat idle is still usable: nothing may have
/// arrived on it, not even the backend's close. Asks the reactor first,
/// so a quiet socket costs no system call.
pub fn is_usable(stream: &mut Stream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream {
        Either::Left(io) => match io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                // Readiness can be left over from the last read; only the
                // socket knows.
                let mut probe = [0u8; 1];
                matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        },
        // Records may have come that carry no data (a TLS 1.3 session
        // ticket): read through TLS, without waiting. Usable only if that
        // finds nothing to hand on and no close.
        Either::Right(io) => {
            let mut probe = [0u8; 1];
            let mut buf = ReadBuf::new(&mut probe);
            Pin::new(&mut **io)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        }
    }
}
