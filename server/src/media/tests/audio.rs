//! Audio under loss: what the server asks of Opus encoders and decoders.

use super::{meeting, sdp_pt};
use crate::media::api::MediaEvent;
use crate::media::peer::OPUS_FMTP;

/// The `a=fmtp` parameters of Opus in the audio sections of an SDP.
fn opus_fmtp(sdp: &str) -> Vec<String> {
    sdp.split("\nm=")
        .skip(1)
        .filter(|sec| sec.starts_with("audio"))
        .filter_map(|sec| {
            let pt = sdp_pt(sec, "opus/", None)?;
            let prefix = format!("a=fmtp:{pt} ");
            sec.lines()
                .find_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
                .map(str::to_owned)
        })
        .collect()
}

fn has_all(fmtp: &str, params: &str) -> bool {
    params
        .split(';')
        .all(|p| fmtp.split(';').any(|f| f.trim() == p))
}

#[test]
fn publish_answers_and_subscribe_offers_ask_for_opus_fec_and_dtx() {
    let (sim, alice, subs) = meeting(61, &["bob"]);
    let offer = &sim.client(alice).sdps[0];
    let offered = opus_fmtp(offer);
    assert_eq!(offered.len(), 1, "alice offers one audio section: {offer}");
    assert!(
        !offered[0].contains("usedtx"),
        "alice offers Opus as Chromium does, without DTX: {offered:?}"
    );
    let answer = sim
        .client(alice)
        .events
        .iter()
        .find_map(|(_, e)| match e {
            MediaEvent::Answer { sdp } => Some(sdp.clone()),
            _ => None,
        })
        .expect("alice's publish offer was answered");
    let answered = opus_fmtp(&answer);
    assert_eq!(answered.len(), 1, "{answer}");
    assert!(
        has_all(&answered[0], OPUS_FMTP),
        "the answer asks for FEC and DTX: {answered:?}"
    );
    // What alice's connection applied is what her encoder follows.
    let applied = sim
        .client(alice)
        .publish
        .as_ref()
        .and_then(|c| c.pc.remote_description())
        .map(|d| d.sdp.clone())
        .expect("alice applied the answer");
    assert_eq!(opus_fmtp(&applied), answered);

    let bob = subs[0];
    let offers: Vec<&String> = sim
        .client(bob)
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            MediaEvent::Offer { sdp, .. } => Some(sdp),
            _ => None,
        })
        .collect();
    let with_audio = offers
        .iter()
        .rev()
        .find(|sdp| !opus_fmtp(sdp).is_empty())
        .expect("bob was offered alice's audio");
    let fmtp = opus_fmtp(with_audio);
    assert!(
        fmtp.iter().all(|f| has_all(f, OPUS_FMTP)),
        "subscribe offers ask for FEC and DTX: {fmtp:?}"
    );
}
