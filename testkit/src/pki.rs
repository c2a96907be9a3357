//! Throwaway certificates, made by the `openssl` command (a child process).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity};

/// A throwaway CA, a server certificate for `127.0.0.1` and `localhost`,
/// and a client certificate, all PEM files in one directory.
pub struct Pki {
    /// The CA's certificate (`ca.pem`): what clients trust, and what a
    /// server requiring client certificates admits.
    pub ca: PathBuf,
    /// The server's certificate (for `127.0.0.1` and `localhost`).
    pub server_cert: PathBuf,
    /// The server certificate's private key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA, for mTLS.
    pub client_cert: PathBuf,
    /// The client certificate's private key.
    pub client_key: PathBuf,
}

impl Pki {
    /// Makes the CA and both certificates in `dir` (valid for a day). Two
    /// calls with different directories make two unrelated CAs.
    pub fn create(dir: &Path) -> Self {
        let p = |f: &str| dir.join(f);
        let s = |f: &Path| f.to_str().expect("a UTF-8 path").to_string();
        let (ca, ca_key) = (p("ca.pem"), p("ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=testkit CA",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
        ]);
        let leaf = |name: &str, ext: &str| {
            let (cert, key, csr, extfile) = (
                p(&format!("{name}.pem")),
                p(&format!("{name}.key")),
                p(&format!("{name}.csr")),
                p(&format!("{name}.ext")),
            );
            std::fs::write(&extfile, ext).expect("write the extensions file");
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&ca),
                "-CAkey",
                &s(&ca_key),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &s(&extfile),
                "-out",
                &s(&cert),
            ]);
            (cert, key)
        };
        let (server_cert, server_key) = leaf(
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        );
        let (client_cert, client_key) = leaf(
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        Self {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// The CA certificate, for a client's trust store.
    pub fn ca_certificate(&self) -> Certificate {
        Certificate::from_pem(read(&self.ca))
    }

    /// The client certificate and its key.
    pub fn client_identity(&self) -> Identity {
        Identity::from_pem(read(&self.client_cert), read(&self.client_key))
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (the TLS tests need the openssl command)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
