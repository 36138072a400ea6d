//! rustls configurations built from PEM files, once, when a config is
//! validated or a listener bound: the server side of TLS listeners (the
//! ring provider, ALPN offering h2 and http/1.1) and the client side of
//! `https://` backends. No I/O but reading the files.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads a PEM certificate chain and private key into a server config.
/// The error names the file and what is wrong with it.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("certificate {} and its key do not fit: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the PEM certificates in a file (a listener's chain, the roots an
/// `https://` backend is checked against); at least one. The error names
/// the file and what is wrong with it.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificate {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse certificate {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

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
