//! HTTPS: `--tls-self-signed` generates a certificate once into the data directory, serves
//! with it, and reuses it after a restart (browsers that accepted it keep accepting it).

use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::common::TestServer;

/// GET over HTTPS with curl (certificate not verified: it is self-signed), returning the body
/// and the certificate's fingerprint as curl saw it.
fn curl_https(port: u16, path: &str) -> Result<(String, String)> {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-w",
            "\n%{certs}",
            &format!("https://127.0.0.1:{port}{path}"),
        ])
        .output()
        .context("running curl (scripts/setup.sh installs it)")?;
    ensure!(out.status.success(), "curl failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, certs) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((body.to_string(), certs.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_is_generated_once_and_reused() -> Result<()> {
    let mut server = TestServer::start_with("info", &["--tls-self-signed"]).await?;
    let cert_path = server.data_dir().join("tls/cert.pem");
    let first = std::fs::read_to_string(&cert_path).context("certificate in <data>/tls")?;
    ensure!(first.contains("BEGIN CERTIFICATE"), "not a PEM certificate");
    let (body, _) = curl_https(server.http.port(), "/healthz")?;
    ensure!(body == "ok", "healthz over https said {body:?}");
    // Plain HTTP on the TLS port is not served.
    let plain = crate::common::server::http_get(server.http, "/healthz").await;
    ensure!(
        plain.map(|(s, _)| s != 200).unwrap_or(true),
        "plain http answered on the https port"
    );

    server.restart().await?;
    let again = std::fs::read_to_string(&cert_path)?;
    ensure!(again == first, "the certificate changed across a restart");
    let (body, _) = curl_https(server.http.port(), "/r/demo")?;
    ensure!(
        body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"),
        "room page over https: {body:.200}"
    );
    Ok(())
}
