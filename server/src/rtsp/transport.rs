//! The `Transport` header (RFC 2326 §12.39): what a client asks for in SETUP and what the
//! server answers.
//!
//! A client lists alternatives separated by commas, most preferred first, each a transport
//! specifier (`RTP/AVP`, `RTP/AVP/UDP`, `RTP/AVP/TCP`) followed by `;`-separated parameters.
//! Parameters this server has no use for (`ttl`, `layers`, `ssrc`, …) are skipped; `destination`
//! is ignored on purpose: media only ever goes to the address the request came from, so the
//! server cannot be used to flood a third party.

use std::fmt;

/// The lower transport of RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lower {
    /// Interleaved in the RTSP connection (§10.12).
    Tcp,
    Udp,
}

impl Lower {
    pub fn as_str(self) -> &'static str {
        match self {
            Lower::Tcp => "tcp",
            Lower::Udp => "udp",
        }
    }
}

/// One alternative of a client's `Transport` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Whether the specifier is RTP/AVP (the only profile served); `RTP/SAVP` and others are
    /// kept so that the choice can say why they were passed over.
    pub rtp_avp: bool,
    pub lower: Lower,
    pub multicast: bool,
    /// `interleaved=a-b`: RTP on channel a, RTCP on b.
    pub interleaved: Option<(u8, u8)>,
    /// `client_port=a-b`: the client receives (and sends) RTP on a, RTCP on b.
    pub client_port: Option<(u16, u16)>,
    /// `mode=`, lower-cased, quotes removed (`play`, `record`).
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Transport header {header:?}: {reason}")]
pub struct TransportError {
    pub header: String,
    pub reason: String,
}

/// Parses a client's `Transport` header into its alternatives.
pub fn parse(header: &str) -> Result<Vec<Spec>, TransportError> {
    let err = |reason: String| TransportError {
        header: header.chars().take(200).collect(),
        reason,
    };
    let mut specs = Vec::new();
    for alternative in header.split(',') {
        let mut params = alternative.split(';').map(str::trim);
        let protocol = params.next().unwrap_or_default().to_ascii_uppercase();
        let mut parts = protocol.split('/');
        let (proto, profile, lower) = (parts.next(), parts.next(), parts.next());
        if parts.next().is_some() || proto.is_none() || profile.is_none() {
            return Err(err(format!("{protocol:?} is not a transport specifier")));
        }
        let lower = match lower {
            None | Some("UDP") => Lower::Udp,
            Some("TCP") => Lower::Tcp,
            Some(other) => return Err(err(format!("unknown lower transport {other:?}"))),
        };
        let mut spec = Spec {
            rtp_avp: proto == Some("RTP") && profile == Some("AVP"),
            lower,
            multicast: false,
            interleaved: None,
            client_port: None,
            mode: None,
        };
        for param in params.filter(|p| !p.is_empty()) {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (param, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("unicast", _) => spec.multicast = false,
                ("multicast", _) => spec.multicast = true,
                ("interleaved", Some(v)) => {
                    let (a, b) = range::<u8>(v).ok_or_else(|| {
                        err(format!("interleaved={v} is not a channel or channel pair"))
                    })?;
                    spec.interleaved = Some((a, b));
                }
                ("client_port", Some(v)) => {
                    let (a, b) = range::<u16>(v)
                        .filter(|(a, b)| *a != 0 && *b != 0)
                        .ok_or_else(|| err(format!("client_port={v} is not a port pair")))?;
                    spec.client_port = Some((a, b));
                }
                ("mode", Some(v)) => {
                    spec.mode = Some(v.trim_matches('"').to_ascii_lowercase());
                }
                _ => {}
            }
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// `a-b` or `a` (then b = a + 1).
fn range<T>(v: &str) -> Option<(T, T)>
where
    T: std::str::FromStr + Copy + TryFrom<u32>,
    u32: From<T>,
{
    match v.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => {
            let a: T = v.parse().ok()?;
            let b = T::try_from(u32::from(a) + 1).ok()?;
            Some((a, b))
        }
    }
}

/// What the server answers in SETUP's `Transport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    /// The server's SSRC for the track (players only; a publisher picks its own).
    pub ssrc: Option<u32>,
    pub mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyKind {
    Interleaved {
        rtp: u8,
        rtcp: u8,
    },
    Udp {
        client: (u16, u16),
        server: (u16, u16),
    },
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ReplyKind::Interleaved { rtp, rtcp } => {
                write!(f, "RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp}")?
            }
            ReplyKind::Udp { client, server } => write!(
                f,
                "RTP/AVP;unicast;client_port={}-{};server_port={}-{}",
                client.0, client.1, server.0, server.1
            )?,
        }
        if let Some(ssrc) = self.ssrc {
            write!(f, ";ssrc={ssrc:08X}")?;
        }
        write!(f, ";mode={}", self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_headers() {
        // As ffmpeg, GStreamer and VLC send them (see testdata/rtsp/).
        let cases: &[(&str, Spec)] = &[
            (
                "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
                Spec {
                    rtp_avp: true,
                    lower: Lower::Tcp,
                    multicast: false,
                    interleaved: Some((0, 1)),
                    client_port: None,
                    mode: Some("record".into()),
                },
            ),
            (
                "RTP/AVP/UDP;unicast;client_port=26652-26653;mode=record",
                Spec {
                    rtp_avp: true,
                    lower: Lower::Udp,
                    multicast: false,
                    interleaved: None,
                    client_port: Some((26652, 26653)),
                    mode: Some("record".into()),
                },
            ),
            (
                "RTP/AVP;unicast;client_port=35050-35051",
                Spec {
                    rtp_avp: true,
                    lower: Lower::Udp,
                    multicast: false,
                    interleaved: None,
                    client_port: Some((35050, 35051)),
                    mode: None,
                },
            ),
            (
                "RTP/AVP/TCP;unicast;interleaved=2-3;mode=\"RECORD\"",
                Spec {
                    rtp_avp: true,
                    lower: Lower::Tcp,
                    multicast: false,
                    interleaved: Some((2, 3)),
                    client_port: None,
                    mode: Some("record".into()),
                },
            ),
            (
                "rtp/avp/tcp;interleaved=4",
                Spec {
                    rtp_avp: true,
                    lower: Lower::Tcp,
                    multicast: false,
                    interleaved: Some((4, 5)),
                    client_port: None,
                    mode: None,
                },
            ),
        ];
        for (header, want) in cases {
            assert_eq!(parse(header).unwrap(), vec![want.clone()], "{header}");
        }
        let alternatives =
            parse("RTP/SAVP;unicast;client_port=1-2, RTP/AVP;multicast;destination=1.2.3.4")
                .unwrap();
        assert!(!alternatives[0].rtp_avp);
        assert!(alternatives[1].multicast);
    }

    #[test]
    fn malformed_headers() {
        for bad in [
            "",
            "RTP",
            "RTP/AVP/SCTP",
            "RTP/AVP/TCP;interleaved=0-300",
            "RTP/AVP/TCP;interleaved=255",
            "RTP/AVP;client_port=x-y",
            "RTP/AVP;client_port=0-1",
            "RTP/AVP/TCP/X",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies() {
        let tcp = Reply {
            kind: ReplyKind::Interleaved { rtp: 0, rtcp: 1 },
            ssrc: Some(0x1a2b),
            mode: "play",
        };
        assert_eq!(
            tcp.to_string(),
            "RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=00001A2B;mode=play"
        );
        let udp = Reply {
            kind: ReplyKind::Udp {
                client: (5000, 5001),
                server: (6000, 6001),
            },
            ssrc: None,
            mode: "record",
        };
        assert_eq!(
            udp.to_string(),
            "RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;mode=record"
        );
    }
}
