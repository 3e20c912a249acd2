//! HTTPS: certificates from files (`--tls-cert/--tls-key`), or a self-signed one generated once
//! into `<data>/tls/` and reused on every start (`--tls-self-signed`), so browsers that were
//! told to trust it keep trusting it.

use std::path::Path;

use axum_server::tls_rustls::RustlsConfig;

use crate::config::{Config, Tls};

pub async fn load(config: &Config) -> Result<Option<RustlsConfig>, String> {
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
    RustlsConfig::from_pem_file(&cert, &key)
        .await
        .map(Some)
        .map_err(|e| {
            format!(
                "cannot load TLS certificate {} / key {}: {e} (both must be PEM)",
                cert.display(),
                key.display()
            )
        })
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(addrs) = if_addrs::get_if_addrs() {
        names.extend(addrs.into_iter().map(|a| a.ip().to_string()));
    }
    names.dedup();
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    std::fs::write(cert_path, cert.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    std::fs::write(key_path, cert.signing_key.serialize_pem())
        .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
    Ok(())
}
