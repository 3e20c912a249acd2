//! The test peer's media path without the server: publish tracks of one webrtc-rs connection
//! straight into another and check that the receiver decodes the pattern. If this fails, the
//! fault is in the test harness (or webrtc-rs/openh264), not in confab.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
};

use crate::common::media::VideoSource;
use crate::common::peer::{
    build_pc, read_remote_track, run_media_source, LocalTracks, Shared, SourceEvent,
};

struct LoopHandler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    receiver: Option<Arc<Shared>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for LoopHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(c) = event.candidate.to_json() {
            let _ = self.candidates.send(c);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(shared) = &self.receiver {
            tokio::spawn(read_remote_track(track, shared.clone()));
        }
    }
}

fn forward(mut rx: mpsc::UnboundedReceiver<RTCIceCandidateInit>, to: Arc<dyn PeerConnection>) {
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            let _ = to.add_ice_candidate(c).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_pipeline_loopback() -> Result<()> {
    const TAG: u16 = 0x155;
    let shared = Shared::new();
    let (tx1, rx1) = mpsc::unbounded_channel();
    let (tx2, rx2) = mpsc::unbounded_channel();
    let sender = build_pc(Arc::new(LoopHandler {
        candidates: tx1,
        receiver: None,
    }))
    .await?;
    let receiver = build_pc(Arc::new(LoopHandler {
        candidates: tx2,
        receiver: Some(shared.clone()),
    }))
    .await?;
    let tracks = LocalTracks::new("loop")?;
    let senders = tracks.add_to(&sender).await?;
    let offer = sender.create_offer(None).await?;
    sender.set_local_description(offer.clone()).await?;
    receiver.set_remote_description(offer).await?;
    let answer = receiver.create_answer(None).await?;
    receiver.set_local_description(answer.clone()).await?;
    sender.set_remote_description(answer).await?;
    forward(rx1, receiver.clone());
    forward(rx2, sender.clone());

    let keyframe_requests = Arc::new(AtomicU64::new(0));
    let counter = keyframe_requests.clone();
    let source = tokio::spawn(run_media_source(
        tracks,
        senders,
        VideoSource::live(TAG)?,
        TAG,
        async { Ok(()) },
        move |e| {
            if let SourceEvent::KeyframeRequest = e {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        },
    ));
    let result = shared
        .wait_until(
            "30 frames and 25 audio packets",
            Duration::from_secs(30),
            |s| s.receiving_from("loop", 30, 25),
        )
        .await;
    source.abort();
    let _ = sender.close().await;
    let _ = receiver.close().await;
    result?;
    let r = shared.read(|s| s.remote("loop"));
    let summary = shared.read(|s| s.summary());
    eprintln!("{summary}");
    assert_eq!(r.frames_bad, 0, "{summary}");
    assert_eq!(r.video_tags, [TAG].into(), "{summary}");
    assert_eq!(r.audio_tags, [TAG].into(), "{summary}");
    assert_eq!(r.audio_bad, 0, "{summary}");
    assert!(
        r.counters_seen.len() >= 10,
        "the square did not move: {summary}"
    );
    Ok(())
}
