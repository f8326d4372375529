//! A test certificate authority for HTTPS tests (the hub's own TLS, and HTTPS servers the hub
//! fetches from): issues leaf certificates for loopback names, and gives its PEM for clients to
//! trust. Test-only: keys live in memory, nothing is persisted.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh self-signed CA.
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "Lodge test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        TestCa { issuer }
    }

    /// A leaf certificate for `names` (IP addresses or DNS names, e.g. "127.0.0.1",
    /// "localhost"), signed by this CA: (certificate chain PEM, private key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "lodge test server");
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate (PEM), for clients to trust.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate as reqwest wants it.
    pub fn reqwest_cert(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem().as_bytes()).expect("CA PEM")
    }
}
