//! The hub's own TLS (`[server] tls_cert`, `tls_key`): loads the PEM certificate chain and key,
//! and holds the current pair for rustls so a reload (SIGHUP) takes effect on the next
//! handshake without a restart. A reload that fails keeps the pair in use. It does not accept
//! connections (the edge does) nor decide when to reload (the `serve` command does).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{key} does not fit the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// The crypto backend of the hub's TLS, named rather than left to process-wide defaults.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificate and key files, and the pair loaded from them last.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (a PEM private key); an error names the
    /// file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(pair)),
        }))
    }

    /// Reads the files again; on success new handshakes use the new pair, on failure the old
    /// one stays (and the error says why).
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.cert, &self.key)?;
        if let Ok(mut c) = self.current.write() {
            *c = Arc::new(pair);
        }
        Ok(())
    }

    /// A rustls server configuration that always presents the current pair; ALPN http/1.1
    /// (the hub speaks HTTP/1.1 only).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "no CERTIFICATE block in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| pem_error(key, format!("no PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}
