//! HTTPS: certificates from files (`--tls-cert/--tls-key`), or a self-signed one generated once
//! into `<data>/tls/` and reused on every start (`--tls-self-signed`), so browsers that were
//! told to trust it keep trusting it.

use std::path::{Path, PathBuf};

use axum_server::tls_rustls::RustlsConfig;

use crate::config::{Config, Tls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(rcgen::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load TLS certificate {} / key {}: {source} (both must be PEM)", cert.display(), key.display())]
    Load {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
}

pub async fn load(config: &Config) -> Result<Option<RustlsConfig>, TlsError> {
    let (cert, key) = match &config.tls {
        Tls::Off => return Ok(None),
        Tls::Files { cert, key } => (cert.clone(), key.clone()),
        Tls::SelfSigned => {
            let dir = config.data.join("tls");
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !cert.exists() || !key.exists() {
                generate(&dir, &cert, &key)?;
                tracing::info!(cert = %cert.display(), "generated a self-signed certificate");
            }
            (cert, key)
        }
    };
    // rustls needs one process-wide crypto provider; both ring and aws-lc are linked.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match RustlsConfig::from_pem_file(&cert, &key).await {
        Ok(c) => Ok(Some(c)),
        Err(source) => Err(TlsError::Load { cert, key, source }),
    }
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(addrs) = if_addrs::get_if_addrs() {
        names.extend(addrs.into_iter().map(|a| a.ip().to_string()));
    }
    names.dedup();
    let cert = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    let write = |path: &Path, pem: String| {
        std::fs::write(path, pem).map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
    };
    write(cert_path, cert.cert.pem())?;
    write(key_path, cert.signing_key.serialize_pem())
}
