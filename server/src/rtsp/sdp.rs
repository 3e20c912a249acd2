//! SDP (RFC 8866) as the RTSP server writes it: the DESCRIBE answer, from [`OutputTrack`]s.
//! Reading a publisher's ANNOUNCE body is the bridge's (`crate::bridge::sdp`), since the camera
//! puller reads the same SDP; it is re-exported here for the session and the fuzz target.

pub use crate::bridge::sdp::{parse_announce, SdpError};
use crate::bridge::OutputTrack;

/// The SDP a player gets from DESCRIBE: one media section per track, controlled as
/// `trackID={key}` relative to the `Content-Base` the response carries, and the aggregate
/// control `*` for the whole presentation.
pub fn describe(room: &str, id: &str, session_id: u64, tracks: &[OutputTrack]) -> String {
    use sdp_types::{Attribute, Connection, Media, Origin, Session, Time};
    let mut session = Session::new(
        Origin {
            username: None,
            sess_id: session_id.to_string(),
            sess_version: 1,
            nettype: "IN".into(),
            addrtype: "IP4".into(),
            unicast_address: "0.0.0.0".into(),
        },
        format!("confab {room}/{id}"),
    );
    session.connection = Some(Connection {
        nettype: "IN".into(),
        addrtype: "IP4".into(),
        connection_address: "0.0.0.0".into(),
    });
    session.times.push(Time::new(0, 0));
    session
        .attributes
        .push(Attribute::with_value("tool", "confab"));
    session
        .attributes
        .push(Attribute::with_value("control", "*"));
    for t in tracks {
        let mut media = Media {
            media: t.kind.as_str().to_owned(),
            port: 0,
            num_ports: None,
            proto: "RTP/AVP".into(),
            fmt: t.payload_type.to_string(),
            media_title: None,
            connections: Vec::new(),
            bandwidths: Vec::new(),
            key: None,
            attributes: Vec::new(),
        };
        let rtpmap = if t.channels > 1 {
            format!(
                "{} {}/{}/{}",
                t.payload_type, t.encoding, t.clock_rate, t.channels
            )
        } else {
            format!("{} {}/{}", t.payload_type, t.encoding, t.clock_rate)
        };
        media.add_attribute_with_value("rtpmap", rtpmap);
        if let Some(fmtp) = &t.fmtp {
            media.add_attribute_with_value("fmtp", format!("{} {fmtp}", t.payload_type));
        }
        media.add_attribute_with_value("control", format!("trackID={}", t.key.0));
        session.medias.push(media);
    }
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = session.write(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::api::TrackKey;
    use crate::protocol::MediaKind;

    #[test]
    fn describe_round_trips_through_the_parser() {
        let tracks = vec![
            OutputTrack {
                key: TrackKey(7),
                kind: MediaKind::Video,
                encoding: "H264".into(),
                payload_type: 96,
                clock_rate: 90000,
                channels: 1,
                fmtp: Some("packetization-mode=1;profile-level-id=42e01f".into()),
            },
            OutputTrack {
                key: TrackKey(9),
                kind: MediaKind::Audio,
                encoding: "opus".into(),
                payload_type: 111,
                clock_rate: 48000,
                channels: 2,
                fmtp: None,
            },
            OutputTrack {
                key: TrackKey(10),
                kind: MediaKind::Audio,
                encoding: "PCMU".into(),
                payload_type: 0,
                clock_rate: 8000,
                channels: 1,
                fmtp: None,
            },
        ];
        let sdp = describe("demo", "cam", 42, &tracks);
        assert!(sdp.starts_with("v=0\r\n"), "{sdp}");
        assert!(sdp.contains("s=confab demo/cam\r\n"), "{sdp}");
        assert!(sdp.contains("a=control:*\r\n"), "{sdp}");
        let parsed = parse_announce(sdp.as_bytes()).unwrap();
        let back: Vec<(String, u8, String, u32, u16, Option<String>)> = parsed
            .into_iter()
            .map(|t| {
                (
                    t.control,
                    t.payload_type,
                    t.encoding,
                    t.clock_rate,
                    t.channels,
                    t.fmtp,
                )
            })
            .collect();
        let want: Vec<(String, u8, String, u32, u16, Option<String>)> = tracks
            .iter()
            .map(|t| {
                (
                    format!("trackID={}", t.key.0),
                    t.payload_type,
                    t.encoding.clone(),
                    t.clock_rate,
                    t.channels,
                    t.fmtp.clone(),
                )
            })
            .collect();
        assert_eq!(back, want);
    }
}
