//! What an operator needs to see when browsers cannot get media through: which ICE candidates
//! the server announces (`GET /api/diagnostics/ice`), how each address looks from outside
//! (loopback, private, public), and plain-language warnings for the usual mistakes (only
//! loopback or private addresses announced to a public audience, a `--public-ip` that is not
//! where the page was reached, no ICE-TCP, no TURN).

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use crate::media::peer;

/// The media plane's addresses as started.
#[derive(Debug, Clone, Default)]
pub struct Announced {
    /// UDP host candidates (`--media`, or `--public-ip` with its port).
    pub udp: Vec<SocketAddr>,
    /// Passive ICE-TCP host candidates (`--media-tcp`); empty when off.
    pub tcp: Vec<SocketAddr>,
    /// Whether `--public-ip` chose them.
    pub public_ip: bool,
    /// The TURN relay's listeners (`--turn`): UDP, TCP, TLS.
    pub turn: Option<(SocketAddr, SocketAddr, Option<SocketAddr>)>,
}

/// How an address looks to a browser elsewhere.
pub fn scope(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_private() || v4.is_link_local() => "private",
        // 100.64.0.0/10: carrier-grade NAT, unreachable from the internet too.
        IpAddr::V4(v4) if v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 => "private",
        IpAddr::V4(v4) if v4.is_documentation() => "documentation",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        // Unique local (fc00::/7) and link-local (fe80::/10).
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => "private",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "private",
        _ => "public",
    }
}

/// The report, for a page reached at `host` (the request's Host header, if any).
pub fn ice_report(a: &Announced, host: Option<&str>) -> Value {
    let entry = |addr: &SocketAddr, line: Option<String>| {
        json!({
            "address": addr.to_string(),
            "scope": scope(addr.ip()),
            "candidate": line,
        })
    };
    let udp: Vec<Value> = a
        .udp
        .iter()
        .map(|c| entry(c, peer::host_candidate(*c).ok().map(|i| i.candidate)))
        .collect();
    let tcp: Vec<Value> = a
        .tcp
        .iter()
        .map(|c| entry(c, peer::tcp_host_candidate(*c).ok().map(|i| i.candidate)))
        .collect();
    let mut warnings = Vec::new();
    let scopes: Vec<&str> = a.udp.iter().map(|c| scope(c.ip())).collect();
    if !scopes.is_empty() && scopes.iter().all(|s| *s == "loopback") {
        warnings.push("only loopback addresses are announced: browsers on other machines cannot reach the media port (start the server on a reachable address, or give --public-ip)".to_owned());
    } else if !scopes.contains(&"public") {
        warnings.push("no public address is announced: browsers outside this network cannot reach the media port; behind NAT give --public-ip with the address they reach (and forward the media port)".to_owned());
    }
    // The page was reached at an IP address that media is not announced on.
    let host_ip = host.and_then(host_ip);
    if let Some(ip) = host_ip {
        if !ip.is_loopback() && !a.udp.iter().any(|c| c.ip() == ip) {
            warnings.push(format!(
                "this page was reached at {ip}, but media is announced on {}: browsers that reach the server at {ip} may not reach those; check --public-ip",
                a.udp
                    .iter()
                    .map(|c| c.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if a.tcp.is_empty() {
        warnings.push("ICE-TCP is off (--media-tcp off): browsers whose UDP is blocked have no way in unless --turn runs".to_owned());
    }
    let turn = a.turn.map(|(u, t, s)| {
        json!({
            "udp": u.to_string(),
            "tcp": t.to_string(),
            "tls": s.map(|s| s.to_string()),
        })
    });
    if let Some((_, _, None)) = a.turn {
        warnings.push("TURN runs without TLS: give the server a certificate (--tls-cert/--tls-key or --tls-self-signed) so that networks that let only TLS out can use it".to_owned());
    }
    json!({
        "udp": udp,
        "tcp": tcp,
        "public_ip": a.public_ip,
        "turn": turn,
        "page_host": host,
        "warnings": warnings,
    })
}

/// The IP address in a Host header (`1.2.3.4:8080`, `[::1]:8080`), if it is one.
fn host_ip(host: &str) -> Option<IpAddr> {
    if let Ok(sa) = host.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &[&str]) -> Vec<SocketAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn scopes() {
        for (ip, want) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("192.168.1.5", "private"),
            ("100.64.1.1", "private"),
            ("203.0.113.7", "documentation"),
            ("8.8.8.8", "public"),
            ("::1", "loopback"),
            ("fd00::2", "private"),
            ("2001:4860::1", "public"),
        ] {
            assert_eq!(scope(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn a_wrong_public_ip_is_called_out() {
        let a = Announced {
            udp: addrs(&["198.51.100.9:7882"]),
            tcp: addrs(&["198.51.100.9:7882"]),
            public_ip: true,
            turn: None,
        };
        let r = ice_report(&a, Some("8.8.4.4:8080"));
        let w = r["warnings"].to_string();
        assert!(w.contains("reached at 8.8.4.4"), "{w}");
        assert!(w.contains("no public address"), "{w}");
        assert!(r["udp"][0]["candidate"]
            .as_str()
            .unwrap()
            .contains("198.51.100.9 7882 typ host"));
        assert!(r["tcp"][0]["candidate"]
            .as_str()
            .unwrap()
            .contains("tcptype passive"));
        // Reached by name, announced publicly, TCP on, TURN with TLS: nothing to say.
        let ok = Announced {
            udp: addrs(&["8.8.4.4:7882"]),
            tcp: addrs(&["8.8.4.4:7882"]),
            public_ip: true,
            turn: Some((
                "0.0.0.0:3478".parse().unwrap(),
                "0.0.0.0:3478".parse().unwrap(),
                Some("0.0.0.0:5349".parse().unwrap()),
            )),
        };
        let r = ice_report(&ok, Some("meet.example.org"));
        assert_eq!(r["warnings"], json!([]), "{r}");
        let lo = Announced {
            udp: addrs(&["127.0.0.1:7882"]),
            ..Default::default()
        };
        let w = ice_report(&lo, Some("[::1]:8080"))["warnings"].to_string();
        assert!(
            w.contains("only loopback") && w.contains("ICE-TCP is off"),
            "{w}"
        );
    }
}
