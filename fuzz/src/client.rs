//! What the fuzz targets drive the engine with: confab's simulation
//! ([`confab::media::sim`]) with instant links and recording off.
//!
//! A [`Mesh`] is one engine, a publisher (one H.264 track) and a subscriber to it. Once
//! [`Mesh::connect`] returns, both connections have DTLS/SRTP up and the subscriber has
//! received forwarded media, so whatever a client then sends goes through its own SRTP and
//! reaches the engine's forwarding path decrypted.

use std::time::Duration;

use bytes::Bytes;
use confab::media::sim::{ClientId, Dir, LinkConfig, Sim};
use confab::protocol::{MediaKind, PcRole};
use rtc::peer_connection::message::RTCMessage;

/// An IDR slice as a single NAL unit: what starts a subscription.
pub const KEYFRAME: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33, 0xff, 0xfe, 0xf6, 0xf0, 0xfe];

/// A simulation for fuzzing: fixed seed, nothing recorded (it runs for millions of inputs).
pub fn sim() -> Sim {
    let mut sim = Sim::new(1);
    sim.set_recording(false);
    sim
}

/// Which client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Publisher,
    Subscriber,
}

pub struct Mesh {
    pub sim: Sim,
    pub publisher: ClientId,
    pub subscriber: ClientId,
}

impl Mesh {
    /// An engine with a publisher and a subscriber, connected; `None` if that failed within
    /// 30 s of simulated time.
    pub fn connect() -> Option<Mesh> {
        let mut sim = sim();
        let publisher = sim.join("p1");
        let subscriber = sim.join("p2");
        // Datagrams handed over at once, as between parties in one process.
        for c in [publisher, subscriber] {
            for dir in [Dir::Up, Dir::Down] {
                sim.set_link(c, dir, LinkConfig::instant());
            }
        }
        sim.publish(publisher, &[MediaKind::Video]);
        let mut mesh = Mesh {
            sim,
            publisher,
            subscriber,
        };
        for _ in 0..1000 {
            if mesh.sim.connected(publisher) {
                mesh.send_h264(false, 0, KEYFRAME);
            }
            mesh.step(Duration::from_millis(33)).ok()?;
            if mesh.connected() && mesh.received(Who::Subscriber) > 0 {
                return Some(mesh);
            }
        }
        None
    }

    pub fn connected(&self) -> bool {
        self.sim.connected(self.publisher) && self.sim.connected(self.subscriber)
    }

    fn who(&self, who: Who) -> (ClientId, PcRole) {
        match who {
            Who::Publisher => (self.publisher, PcRole::Publish),
            Who::Subscriber => (self.subscriber, PcRole::Subscribe),
        }
    }

    /// RTP packets that reached a client.
    pub fn received(&self, who: Who) -> usize {
        self.sim.client(self.who(who).0).received_count
    }

    /// Every SDP a client sent or received (seeds for the SDP target).
    pub fn sdps(&self, who: Who) -> &[String] {
        &self.sim.client(self.who(who).0).sdps
    }

    /// The publisher's next H.264 packet on its negotiated SSRC and payload type.
    pub fn send_h264(&mut self, marker: bool, ts: u32, payload: &[u8]) {
        self.sim.send_rtp(
            self.publisher,
            0,
            marker,
            ts,
            Bytes::copy_from_slice(payload),
        );
    }

    /// Hands a message to a client's own pipeline (interceptors, SRTP): what the engine gets
    /// is encrypted with that client's keys.
    pub fn send(&mut self, who: Who, message: RTCMessage) {
        let (c, role) = self.who(who);
        self.sim.write(c, role, message);
    }

    /// A datagram as it is, from a client's address straight to the engine.
    pub fn send_raw(&mut self, who: Who, data: &[u8]) {
        let (c, role) = self.who(who);
        self.sim.inject(c, role, data);
    }

    /// Moves everything queued and lets `step` of time pass; an error if a client's
    /// connection ended or the engine sent to an address nobody has.
    pub fn step(&mut self, step: Duration) -> Result<(), String> {
        self.sim.run_for(step);
        if let Some((_, why)) = self.sim.failure() {
            return Err(why.to_owned());
        }
        if self.sim.misrouted > 0 {
            return Err("the engine sent to an address nobody has".to_owned());
        }
        Ok(())
    }
}

/// An engine with a camera (external H.264 track) and a browser participant that has been
/// offered it, not answered yet: what a subscribe answer is judged against.
pub struct Offered {
    pub sim: Sim,
    pub browser: ClientId,
    pub revision: u64,
}

impl Offered {
    pub fn new() -> Offered {
        let mut sim = sim();
        let browser = sim.join("browser");
        sim.client_mut(browser).auto_answer = false;
        sim.add_camera("camera", &[MediaKind::Video]);
        let revision = sim
            .client(browser)
            .pending_offers
            .back()
            .map_or(0, |o| o.revision);
        Offered {
            sim,
            browser,
            revision,
        }
    }
}

impl Default for Offered {
    fn default() -> Self {
        Self::new()
    }
}
