//! A throwaway certificate authority with one server certificate for 127.0.0.1 and localhost,
//! as files, for tests that hand paths to other programs (extra_ca_file, NODE_EXTRA_CA_CERTS).
//! The certificates come from [`super::tls::TestCa`]; nothing here is trusted beyond the test.

use std::path::PathBuf;

pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA certificate (PEM): what a client adds to its trust (extra_ca_file,
    /// NODE_EXTRA_CA_CERTS).
    pub ca_cert: PathBuf,
    /// The server certificate (PEM; SAN IP:127.0.0.1, DNS:localhost) and its key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca = super::tls::TestCa::new();
        let (cert_pem, key_pem) = ca.issue(&["127.0.0.1", "localhost"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        let (ca_cert, cert, key) = (path("ca.pem"), path("server.pem"), path("server.key"));
        for (p, text) in [(&ca_cert, ca.pem()), (&cert, cert_pem), (&key, key_pem)] {
            std::fs::write(p, text).expect("write test CA file");
        }
        TestCa {
            _dir: dir,
            ca_cert,
            cert,
            key,
        }
    }
}
