//! A camera's SDP (RFC 8866), read into [`InputTrack`]s: the body of an RTSP ANNOUNCE from a
//! pushing camera, and the DESCRIBE answer of a camera the server pulls (`pull`).
//!
//! Reading is lenient where real encoders differ (GStreamer writes `OPUS`, ffmpeg omits the
//! rtpmap of static payload types, cameras add attributes nobody knows) and strict only where a
//! track could not be received at all: a dynamic payload type needs its `a=rtpmap`, and with
//! several media sections each needs its own `a=control`.
//!
//! It lives in the bridge, beside [`InputTrack`], because both RTSP roles need it: the server
//! (`crate::rtsp`) for ANNOUNCE and the puller for DESCRIBE; the server's own DESCRIBE answer is
//! written in `crate::rtsp::sdp`.

use super::InputTrack;
use crate::protocol::MediaKind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the SDP does not parse: {0}")]
    Syntax(String),
    #[error("the SDP has no audio or video section")]
    NoMedia,
    #[error("media section {index} ({kind}) has no payload type in its m= line")]
    NoPayloadType { index: usize, kind: String },
    #[error(
        "media section {index} uses dynamic payload type {pt} but has no a=rtpmap:{pt} saying what it is"
    )]
    NoRtpmap { index: usize, pt: u8 },
    #[error("a=rtpmap:{0} is malformed (expected `<pt> <encoding>/<clock rate>[/<channels>]`)")]
    Rtpmap(String),
    #[error("media section {index} has no a=control, and there are several media sections")]
    NoControl { index: usize },
}

/// Static payload types of RFC 3551 §6: (pt, encoding, clock rate, channels).
const STATIC_PAYLOAD_TYPES: &[(u8, &str, u32, u16)] = &[
    (0, "PCMU", 8000, 1),
    (3, "GSM", 8000, 1),
    (4, "G723", 8000, 1),
    (5, "DVI4", 8000, 1),
    (6, "DVI4", 16000, 1),
    (7, "LPC", 8000, 1),
    (8, "PCMA", 8000, 1),
    (9, "G722", 8000, 1),
    (10, "L16", 44100, 2),
    (11, "L16", 44100, 1),
    (12, "QCELP", 8000, 1),
    (13, "CN", 8000, 1),
    (14, "MPA", 90000, 1),
    (15, "G728", 8000, 1),
    (16, "DVI4", 11025, 1),
    (17, "DVI4", 22050, 1),
    (18, "G729", 8000, 1),
    (25, "CelB", 90000, 1),
    (26, "JPEG", 90000, 1),
    (28, "nv", 90000, 1),
    (31, "H261", 90000, 1),
    (32, "MPV", 90000, 1),
    (33, "MP2T", 90000, 1),
    (34, "H263", 90000, 1),
];

/// The audio and video tracks of a publisher's SDP, in order. Other media (`application`,
/// `text`) are left out.
pub fn parse_announce(body: &[u8]) -> Result<Vec<InputTrack>, SdpError> {
    let session = sdp_types::Session::parse(body).map_err(|e| SdpError::Syntax(e.to_string()))?;
    let media_count = session.medias.len();
    let mut tracks = Vec::new();
    for (index, media) in session.medias.iter().enumerate() {
        let kind = match media.media.as_str() {
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            _ => continue,
        };
        // A publisher sends one format per section; the first is the one it uses.
        let pt = media
            .fmt
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
            .ok_or_else(|| SdpError::NoPayloadType {
                index,
                kind: media.media.clone(),
            })?;
        let rtpmap = media
            .get_attribute_values("rtpmap")
            .flatten()
            .find(|v| first_word(v) == pt.to_string());
        let (encoding, clock_rate, channels) = match rtpmap {
            Some(v) => parse_rtpmap(v)?,
            None => STATIC_PAYLOAD_TYPES
                .iter()
                .find(|s| s.0 == pt)
                .map(|&(_, e, c, n)| (e.to_owned(), c, n))
                .ok_or(SdpError::NoRtpmap { index, pt })?,
        };
        let fmtp = media
            .get_attribute_values("fmtp")
            .flatten()
            .find(|v| first_word(v) == pt.to_string())
            .map(|v| v[first_word(v).len()..].trim().to_owned());
        let control = match media.get_first_attribute_value("control").flatten() {
            Some(c) => c.trim().to_owned(),
            None if media_count == 1 => String::new(),
            None => return Err(SdpError::NoControl { index }),
        };
        tracks.push(InputTrack {
            kind,
            control,
            payload_type: pt,
            encoding,
            clock_rate,
            channels,
            fmtp,
        });
    }
    if tracks.is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(tracks)
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or_default()
}

/// `96 H264/90000` → (`H264`, 90000, 1); `97 opus/48000/2` → (`opus`, 48000, 2).
fn parse_rtpmap(value: &str) -> Result<(String, u32, u16), SdpError> {
    let bad = || SdpError::Rtpmap(value.chars().take(100).collect());
    let rest = value[first_word(value).len()..].trim();
    let mut parts = rest.split('/');
    let encoding = parts.next().filter(|e| !e.is_empty()).ok_or_else(bad)?;
    let clock_rate: u32 = parts
        .next()
        .and_then(|c| c.trim().parse().ok())
        .filter(|c| *c > 0)
        .ok_or_else(bad)?;
    let channels: u16 = match parts.next() {
        Some(c) => c.trim().parse().ok().filter(|c| *c > 0).ok_or_else(bad)?,
        None => 1,
    };
    Ok((encoding.to_owned(), clock_rate, channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(
        kind: MediaKind,
        control: &str,
        pt: u8,
        enc: &str,
        clock: u32,
        ch: u16,
        fmtp: Option<&str>,
    ) -> InputTrack {
        InputTrack {
            kind,
            control: control.into(),
            payload_type: pt,
            encoding: enc.into(),
            clock_rate: clock,
            channels: ch,
            fmtp: fmtp.map(Into::into),
        }
    }

    #[test]
    fn ffmpeg_h264_opus() {
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
            a=tool:libavformat LIBAVFORMAT_VERSION\r\nm=video 0 RTP/AVP 96\r\n\
            a=rtpmap:96 H264/90000\r\n\
            a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z2QAHqyyAUBf8uAiAAADAAIAAAMAeB4sXJA=,aOvDyyLA; profile-level-id=64001E\r\n\
            a=control:streamid=0\r\nm=audio 0 RTP/AVP 97\r\nb=AS:64\r\n\
            a=rtpmap:97 opus/48000/2\r\na=control:streamid=1\r\n";
        assert_eq!(
            parse_announce(sdp.as_bytes()).unwrap(),
            vec![
                track(
                    MediaKind::Video,
                    "streamid=0",
                    96,
                    "H264",
                    90000,
                    1,
                    Some("packetization-mode=1; sprop-parameter-sets=Z2QAHqyyAUBf8uAiAAADAAIAAAMAeB4sXJA=,aOvDyyLA; profile-level-id=64001E")
                ),
                track(MediaKind::Audio, "streamid=1", 97, "opus", 48000, 2, None),
            ]
        );
    }

    #[test]
    fn static_payload_types_and_unknown_media() {
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
            m=video 0 RTP/AVP 26\r\na=control:streamid=0\r\n\
            m=audio 0 RTP/AVP 0\r\na=control:streamid=1\r\n\
            m=application 0 RTP/AVP 107\r\na=rtpmap:107 vnd.onvif.metadata/90000\r\na=control:streamid=2\r\n\
            m=audio 0 RTP/AVP 8\r\na=control:rtsp://cam/x/track3\r\n";
        assert_eq!(
            parse_announce(sdp.as_bytes()).unwrap(),
            vec![
                track(MediaKind::Video, "streamid=0", 26, "JPEG", 90000, 1, None),
                track(MediaKind::Audio, "streamid=1", 0, "PCMU", 8000, 1, None),
                track(
                    MediaKind::Audio,
                    "rtsp://cam/x/track3",
                    8,
                    "PCMA",
                    8000,
                    1,
                    None
                ),
            ]
        );
    }

    #[test]
    fn single_section_without_control() {
        let sdp = "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
        let t = parse_announce(sdp.as_bytes()).unwrap();
        assert_eq!(t[0].control, "");
    }

    #[test]
    fn errors() {
        let cases: &[(&str, SdpError)] = &[
            ("", SdpError::Syntax("No version line".into())),
            ("v=0\r\ns=x\r\n", SdpError::NoMedia),
            ("v=0\r\nm=application 0 RTP/AVP 96\r\n", SdpError::NoMedia),
            (
                "v=0\r\nm=video 0 RTP/AVP 96\r\na=control:a\r\n",
                SdpError::NoRtpmap { index: 0, pt: 96 },
            ),
            (
                "v=0\r\nm=video 0 RTP/AVP x\r\n",
                SdpError::NoPayloadType {
                    index: 0,
                    kind: "video".into(),
                },
            ),
            (
                "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264\r\n",
                SdpError::Rtpmap("96 H264".into()),
            ),
            (
                "v=0\r\nm=video 0 RTP/AVP 26\r\nm=audio 0 RTP/AVP 0\r\n",
                SdpError::NoControl { index: 0 },
            ),
        ];
        for (sdp, want) in cases {
            assert_eq!(&parse_announce(sdp.as_bytes()).unwrap_err(), want, "{sdp}");
        }
    }
}
