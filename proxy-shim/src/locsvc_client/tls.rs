//! TLS to locsvc: the PEM files the settings name, read and checked at
//! start-up (a wrong file is named with its setting and path), and the
//! rustls configuration every channel then uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// TLS to locsvc: the PEM contents (read by `load`) and the name to verify.
#[derive(Clone, Default)]
pub struct TlsClient {
    /// CA certificate(s) trusted for locsvc's server certificate.
    pub ca_pem: Vec<u8>,
    /// Client certificate and private key (mTLS), when locsvc wants one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Server name to verify instead of the URL's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// A TLS file setting that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("`{setting}` {}: {reason}", path.display())]
pub struct TlsFileError {
    /// The setting that names the file.
    pub setting: &'static str,
    /// The file's path.
    pub path: PathBuf,
    /// Why it could not be used.
    pub reason: String,
}

impl TlsClient {
    /// Reads the PEM files the settings name; None when TLS is off
    /// (`locsvc_ca` unset). A missing, unreadable or non-PEM file is an
    /// error naming its setting and path.
    pub fn load(settings: &crate::settings::Settings) -> Result<Option<Self>, TlsFileError> {
        let Some(ca) = &settings.locsvc_ca else {
            return Ok(None);
        };
        let ca_pem = read_pem("locsvc_ca", ca, "CERTIFICATE-----")?;
        let identity = match (&settings.locsvc_cert, &settings.locsvc_key) {
            (Some(cert), Some(key)) => Some((
                read_pem("locsvc_cert", cert, "CERTIFICATE-----")?,
                read_pem("locsvc_key", key, "PRIVATE KEY-----")?,
            )),
            _ => None,
        };
        Ok(Some(Self {
            ca_pem,
            identity,
            domain: settings.locsvc_tls_domain.clone(),
        }))
    }

    /// The rustls configuration, its handshake bounded by `budget`.
    pub(super) fn config(&self, budget: Duration) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(budget);
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// The file at `path`, which must hold a PEM block whose BEGIN line ends
/// with `marker` (rustls would otherwise ignore it silently and fail every
/// handshake later).
fn read_pem(setting: &'static str, path: &Path, marker: &str) -> Result<Vec<u8>, TlsFileError> {
    let err = |reason: String| TlsFileError {
        setting,
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot be read: {e}")))?;
    let text = String::from_utf8_lossy(&pem);
    let found = text
        .lines()
        .any(|l| l.trim().starts_with("-----BEGIN ") && l.trim().ends_with(marker));
    if !found {
        let what = marker.trim_end_matches('-').to_ascii_lowercase();
        return Err(err(format!("holds no PEM {what}")));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_read_and_a_missing_or_non_pem_one_is_named_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = |f: &str| dir.path().join(f);
        std::fs::write(
            path("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(path("key.txt"), "not a key\n").unwrap();
        let mut s = crate::settings::Settings::default();
        assert!(TlsClient::load(&s).unwrap().is_none(), "no CA, no TLS");
        s.locsvc_ca = Some(path("ca.pem"));
        s.locsvc_tls_domain = Some("locsvc.example.com".into());
        let t = TlsClient::load(&s).unwrap().unwrap();
        assert!(t.identity.is_none());
        assert_eq!(t.domain.as_deref(), Some("locsvc.example.com"));
        s.locsvc_cert = Some(path("missing.pem"));
        s.locsvc_key = Some(path("key.txt"));
        let e = TlsClient::load(&s).unwrap_err();
        assert_eq!(e.setting, "locsvc_cert");
        let text = e.to_string();
        assert!(
            text.contains("locsvc_cert") && text.contains("missing.pem"),
            "{text}"
        );
        s.locsvc_cert = Some(path("ca.pem"));
        let e = TlsClient::load(&s).unwrap_err().to_string();
        assert!(
            e.contains("locsvc_key") && e.contains("key.txt") && e.contains("no PEM private key"),
            "{e}"
        );
        s.locsvc_ca = Some(path("key.txt"));
        let e = TlsClient::load(&s).unwrap_err().to_string();
        assert!(
            e.contains("`locsvc_ca`") && e.contains("no PEM certificate"),
            "{e}"
        );
    }
}
