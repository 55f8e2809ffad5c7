//! A throw-away certificate authority for tests: rcgen CA, leaf certificates for loopback names,
//! PEM files on disk, and a rustls client config that trusts the CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

/// A test CA whose key lives only in memory.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

impl TestCa {
    /// Generates a fresh CA (ECDSA P-256).
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to parse");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "labgate test CA");
        let key = KeyPair::generate().expect("ring generates P-256 keys");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signing a CA works");
        TestCa { issuer }
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn ca_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A server+client leaf for `127.0.0.1`, `localhost` and `names`; returns (cert PEM, key PEM).
    /// IP strings become IP SANs.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let (cert, key) = self.issue(names);
        (cert.pem(), key.serialize_pem())
    }

    fn issue(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let mut sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        for name in names {
            if !sans.iter().any(|s| s == name) {
                sans.push(name.to_string());
            }
        }
        let mut params = CertificateParams::new(sans).expect("test names are valid SANs");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("ring generates P-256 keys");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("the CA signs leaves");
        (cert, key)
    }

    /// Writes `cert.pem` and `key.pem` for a new leaf into `dir`; returns their paths.
    pub fn write_leaf(&self, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(names);
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert).expect("writing cert.pem into the test dir");
        std::fs::write(&key_path, key).expect("writing key.pem into the test dir");
        (cert_path, key_path)
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der()))
            .expect("our CA certificate parses");
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// A rustls server config presenting a fresh leaf for the loopback names.
    pub fn server_config(&self, names: &[&str]) -> anyhow::Result<rustls::ServerConfig> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cert, key) = self.issue(names);
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok(rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_is_signed_by_the_ca_and_writes_files() {
        let ca = TestCa::new();
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.write_leaf(dir.path(), &["gateway.test"]);
        assert!(
            std::fs::read_to_string(cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert!(
            std::fs::read_to_string(key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        assert!(ca.server_config(&[]).is_ok());
    }
}
