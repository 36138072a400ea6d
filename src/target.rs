//! Where sluice sends things, as validation builds them: a backend's
//! address, protocol and TLS (the identity its connection pool is keyed
//! by), and the access log's destination. Plain values, below the table and
//! the data plane, so that the data plane needs nothing from the config.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// Appended to; the file is made if missing.
    File(PathBuf),
}

/// Where a backend is and how to speak to it; this is the identity its
/// connection pool is keyed by, so a pool survives weight changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// `host:port`, as it goes into the request URI.
    pub authority: http::uri::Authority,
    pub protocol: Protocol,
    /// Set for `https://` backends: how their certificate is checked.
    pub tls: Option<BackendTls>,
}

/// The TLS an `https://` backend is spoken to with, ready to use: its
/// trust roots were read and its client configuration built by validation,
/// so a pool never reads a file. Equal (and hashed) by what it was built
/// from, so a reload that names the same roots and name keeps the pool.
#[derive(Clone)]
pub struct BackendTls {
    /// The name the certificate must carry, sent as SNI (when a DNS name).
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// The certificates of `tls.ca`; empty for the built-in public roots.
    pub ca: Arc<[rustls_pki_types::CertificateDer<'static>]>,
    /// The certificate chain of `tls.cert`, presented when the backend asks
    /// (its key checked to fit); empty when sluice has none to present.
    pub identity: Arc<[rustls_pki_types::CertificateDer<'static>]>,
    pub client: Arc<rustls::ClientConfig>,
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && self.ca == other.ca
            && self.identity == other.identity
    }
}

impl Eq for BackendTls {}

impl std::hash::Hash for BackendTls {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.server_name.hash(state);
        self.ca.hash(state);
        self.identity.hash(state);
    }
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name.to_str())
            .field("ca_certificates", &self.ca.len())
            .field("client_certificates", &self.identity.len())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    /// HTTP/2, as gRPC backends speak: with prior knowledge on an `http://`
    /// backend (`h2c`), agreed by ALPN on an `https://` one.
    Http2,
}
