//! Process-wide counters, rendered in Prometheus text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Why the engine asked a source for a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeCause {
    /// A subscription or player started.
    Start,
    /// A subscriber's decoder asked (PLI or FIR).
    Subscriber,
    /// A subscriber moves to another simulcast layer (its tile, or its estimate).
    Layer,
    /// Video resumes: shown again, room in the estimate again, a congested connection drained,
    /// a player that lagged.
    Resume,
    /// A request that went unanswered is repeated.
    Watchdog,
}

impl KeyframeCause {
    pub const ALL: [KeyframeCause; 5] = [
        KeyframeCause::Start,
        KeyframeCause::Subscriber,
        KeyframeCause::Layer,
        KeyframeCause::Resume,
        KeyframeCause::Watchdog,
    ];

    fn label(self) -> &'static str {
        match self {
            KeyframeCause::Start => "start",
            KeyframeCause::Subscriber => "subscriber",
            KeyframeCause::Layer => "layer",
            KeyframeCause::Resume => "resume",
            KeyframeCause::Watchdog => "watchdog",
        }
    }
}

/// Upper bounds of the estimate histogram, bits per second.
pub const ESTIMATE_BUCKETS: [f64; 7] = [
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_000_000.0,
    4_000_000.0,
    8_000_000.0,
    16_000_000.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub forwarded_packets: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub received_packets: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Datagrams no connection claimed, or that a connection rejected.
    pub dropped_datagrams: AtomicU64,
    /// Forwarded packets dropped because a send failed (full socket buffer, unreachable).
    pub dropped_sends: AtomicU64,
    /// System calls that sent datagrams from the media port (one `sendmmsg` carries many).
    pub send_calls: AtomicU64,
    /// Datagrams those calls sent.
    pub sent_datagrams: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// Keyframes the engine asked its sources for, by [`KeyframeCause`] (before the per-layer
    /// throttle, so a subscriber asking ten times a second shows as ten).
    pub keyframe_asks: [AtomicU64; KeyframeCause::ALL.len()],
    /// Subscribers' bandwidth estimates now: how many are at or under each of
    /// [`ESTIMATE_BUCKETS`] (the last, `+Inf`, counts them all), and their sum in bit/s.
    pub estimates: [AtomicI64; ESTIMATE_BUCKETS.len() + 1],
    pub estimates_sum: AtomicI64,
    /// Bandwidth probes started, and those that raised the estimate.
    pub probes: AtomicU64,
    pub probes_raised: AtomicU64,
    /// Video packets the pacers dropped (a subscriber far over its estimate).
    pub paced_drops: AtomicU64,
    /// Packets subscribers asked to be resent beyond their retransmission budget.
    pub refused_resends: AtomicU64,
    /// Times a subscriber moved from one simulcast layer to another.
    pub layer_switches: AtomicU64,
    /// Simulcast layers their publishers were told to pause (nobody receives them), now.
    pub paused_layers: AtomicI64,
    /// Times a room's dominant speaker changed.
    pub speaker_changes: AtomicU64,
    /// Camera packets the bridge dropped because the media engine's data queue stayed full.
    pub camera_dropped_packets: AtomicU64,
    /// Chat store transactions committed by the group-commit writer, and the writes in them.
    pub chat_commits: AtomicU64,
    pub chat_writes: AtomicU64,
    /// Chat store transactions that failed (every write in them was refused).
    pub chat_failed_commits: AtomicU64,
    /// Cluster mode: joins sent to the room's node, joins refused because Redis could not be
    /// asked, and operator actions relayed to the room's node.
    pub cluster_redirects: AtomicU64,
    pub cluster_unavailable: AtomicU64,
    pub cluster_relayed_actions: AtomicU64,
    pub peers_new: AtomicI64,
    pub peers_connecting: AtomicI64,
    pub peers_connected: AtomicI64,
    pub peers_disconnected: AtomicI64,
    pub peers_failed: AtomicI64,
    /// Connected peer connections by how the browser reaches the media port.
    pub connected_udp: AtomicI64,
    pub connected_tcp: AtomicI64,
    pub connected_relay: AtomicI64,
    /// Open ICE-TCP connections to the media port.
    pub ice_tcp_connections: AtomicI64,
    /// Times an ICE-TCP connection's send queue filled past its mark (its video paused).
    pub ice_tcp_congested: AtomicU64,
    /// TURN allocations by how their clients reach the TURN server.
    pub turn_allocations_udp: AtomicI64,
    pub turn_allocations_tcp: AtomicI64,
    pub turn_allocations_tls: AtomicI64,
    pub rtsp_sessions: AtomicI64,
    pub websocket_connections: AtomicI64,
    /// Snapshot decoders (`frame.jpeg`, `stream.mjpeg`) running now, and started in all.
    pub snapshot_decoders: AtomicI64,
    pub snapshot_decoders_started: AtomicU64,
    /// Access units they decoded, and the decoder threads' CPU time for them.
    pub snapshot_frames_decoded: AtomicU64,
    pub snapshot_decode_cpu_micros: AtomicU64,
    /// JPEGs encoded from decoded pictures, and the CPU time of it.
    pub snapshot_jpegs_encoded: AtomicU64,
    pub snapshot_encode_cpu_micros: AtomicU64,
    /// Cameras' low layers (`bridge/low_layer.rs`): transcoders running now and started in
    /// all, pictures they encoded, and their threads' CPU time (decoding, scaling, encoding).
    pub low_layer_transcoders: AtomicI64,
    pub low_layer_transcoders_started: AtomicU64,
    pub low_layer_frames: AtomicU64,
    pub low_layer_cpu_micros: AtomicU64,
}

impl Metrics {
    pub fn keyframe_asked(&self, cause: KeyframeCause) {
        self.keyframe_asks[cause as usize].fetch_add(1, Relaxed);
    }

    pub fn render(&self, rooms: usize, participants: usize) -> String {
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("confab_rooms", "Rooms with anyone in them.", rooms as i64);
        gauge(
            "confab_participants",
            "Participants in all rooms.",
            participants as i64,
        );
        gauge(
            "confab_websocket_connections",
            "Open signaling WebSockets.",
            self.websocket_connections.load(Relaxed),
        );
        gauge(
            "confab_rtsp_sessions",
            "Open RTSP sessions.",
            self.rtsp_sessions.load(Relaxed),
        );
        gauge(
            "confab_paused_layers",
            "Simulcast layers their publishers pause because nobody receives them (dynacast).",
            self.paused_layers.load(Relaxed),
        );
        gauge(
            "confab_snapshot_decoders",
            "Decoders of participants' video running for frame.jpeg and stream.mjpeg.",
            self.snapshot_decoders.load(Relaxed),
        );
        gauge(
            "confab_low_layer_transcoders",
            "Cameras' low layers being made now (decode, scale, encode) for subscribers that need a smaller picture.",
            self.low_layer_transcoders.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP confab_peer_connections WebRTC peer connections by state.\n# TYPE confab_peer_connections gauge"
        );
        for (state, v) in [
            ("new", &self.peers_new),
            ("connecting", &self.peers_connecting),
            ("connected", &self.peers_connected),
            ("disconnected", &self.peers_disconnected),
            ("failed", &self.peers_failed),
        ] {
            let _ = writeln!(
                s,
                "confab_peer_connections{{state=\"{state}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP confab_connected_peer_connections Connected WebRTC peer connections by how the browser reaches the media port (udp, tcp: ICE-TCP, relay: through a TURN server).\n# TYPE confab_connected_peer_connections gauge"
        );
        for (transport, v) in [
            ("udp", &self.connected_udp),
            ("tcp", &self.connected_tcp),
            ("relay", &self.connected_relay),
        ] {
            let _ = writeln!(
                s,
                "confab_connected_peer_connections{{transport=\"{transport}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP confab_ice_tcp_connections Open ICE-TCP connections to the media port.\n# TYPE confab_ice_tcp_connections gauge\nconfab_ice_tcp_connections {}",
            self.ice_tcp_connections.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP confab_turn_allocations TURN allocations (relays) by how the client reaches the TURN server.\n# TYPE confab_turn_allocations gauge"
        );
        for (transport, v) in [
            ("udp", &self.turn_allocations_udp),
            ("tcp", &self.turn_allocations_tcp),
            ("tls", &self.turn_allocations_tls),
        ] {
            let _ = writeln!(
                s,
                "confab_turn_allocations{{transport=\"{transport}\"}} {}",
                v.load(Relaxed)
            );
        }
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        };
        counter(
            "confab_forwarded_packets_total",
            "RTP packets forwarded to subscribers.",
            &self.forwarded_packets,
        );
        counter(
            "confab_forwarded_bytes_total",
            "RTP payload bytes forwarded to subscribers.",
            &self.forwarded_bytes,
        );
        counter(
            "confab_received_packets_total",
            "RTP packets received from publishers.",
            &self.received_packets,
        );
        counter(
            "confab_received_bytes_total",
            "RTP payload bytes received from publishers.",
            &self.received_bytes,
        );
        counter(
            "confab_dropped_datagrams_total",
            "UDP datagrams dropped: unknown source, garbage, or rejected by the connection.",
            &self.dropped_datagrams,
        );
        counter(
            "confab_dropped_sends_total",
            "Outgoing datagrams dropped because the socket refused them.",
            &self.dropped_sends,
        );
        counter(
            "confab_media_send_calls_total",
            "System calls that sent datagrams from the media port.",
            &self.send_calls,
        );
        counter(
            "confab_media_sent_datagrams_total",
            "Datagrams sent from the media port.",
            &self.sent_datagrams,
        );
        counter(
            "confab_ice_tcp_congested_total",
            "Times an ICE-TCP connection's send queue filled up and its video paused.",
            &self.ice_tcp_congested,
        );
        counter(
            "confab_keyframe_requests_total",
            "Keyframe requests (PLI) sent to publishers.",
            &self.keyframe_requests,
        );
        counter(
            "confab_layer_switches_total",
            "Times a subscriber moved to another simulcast layer (at a keyframe of it).",
            &self.layer_switches,
        );
        counter(
            "confab_speaker_changes_total",
            "Times a room's dominant speaker changed (or left).",
            &self.speaker_changes,
        );
        counter(
            "confab_camera_dropped_packets_total",
            "Camera packets dropped because the media engine's data queue was full (the track restarts at its next keyframe).",
            &self.camera_dropped_packets,
        );
        counter(
            "confab_chat_commits_total",
            "Chat store transactions committed (one fsync each; writes per commit = chat_writes / chat_commits).",
            &self.chat_commits,
        );
        counter(
            "confab_chat_writes_total",
            "Chat messages and file records committed.",
            &self.chat_writes,
        );
        counter(
            "confab_chat_failed_commits_total",
            "Chat store transactions that failed; their writes were refused to the senders.",
            &self.chat_failed_commits,
        );
        counter(
            "confab_cluster_redirects_total",
            "Joins redirected to the node their room is on (cluster mode).",
            &self.cluster_redirects,
        );
        counter(
            "confab_cluster_unavailable_total",
            "Joins refused because Redis could not be asked where their room is (cluster mode).",
            &self.cluster_unavailable,
        );
        counter(
            "confab_cluster_relayed_actions_total",
            "Operator actions this node relayed to the room's node over Redis (cluster mode).",
            &self.cluster_relayed_actions,
        );
        counter(
            "confab_snapshot_decoders_started_total",
            "Snapshot decoders started (one per participant while anyone asks for its pictures).",
            &self.snapshot_decoders_started,
        );
        counter(
            "confab_snapshot_frames_decoded_total",
            "H.264 pictures the snapshot decoders decoded.",
            &self.snapshot_frames_decoded,
        );
        counter(
            "confab_snapshot_jpegs_encoded_total",
            "JPEGs encoded from decoded pictures (once per picture and width, shared by viewers).",
            &self.snapshot_jpegs_encoded,
        );
        counter(
            "confab_low_layer_transcoders_started_total",
            "Camera low-layer transcoders started (one per camera track while a subscriber needs it).",
            &self.low_layer_transcoders_started,
        );
        counter(
            "confab_low_layer_frames_total",
            "Pictures the camera low-layer transcoders encoded.",
            &self.low_layer_frames,
        );
        for (name, help, micros) in [
            (
                "confab_low_layer_cpu_seconds_total",
                "CPU time of the camera low-layer transcoders' threads (decoding the camera, scaling, encoding).",
                &self.low_layer_cpu_micros,
            ),
            (
                "confab_snapshot_decode_cpu_seconds_total",
                "CPU time of the snapshot decoders' threads decoding H.264.",
                &self.snapshot_decode_cpu_micros,
            ),
            (
                "confab_snapshot_encode_cpu_seconds_total",
                "CPU time spent converting and encoding snapshot JPEGs.",
                &self.snapshot_encode_cpu_micros,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {:.6}",
                micros.load(Relaxed) as f64 / 1e6
            );
        }
        let _ = writeln!(
            s,
            "# HELP confab_keyframe_asks_total Keyframes the engine asked sources for, by cause (before the per-layer throttle).\n# TYPE confab_keyframe_asks_total counter"
        );
        for cause in KeyframeCause::ALL {
            let _ = writeln!(
                s,
                "confab_keyframe_asks_total{{cause=\"{}\"}} {}",
                cause.label(),
                self.keyframe_asks[cause as usize].load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP confab_subscriber_estimate_bps Subscribers' bandwidth estimates now (from their TWCC feedback), as a histogram.\n# TYPE confab_subscriber_estimate_bps gaugehistogram"
        );
        for (i, le) in ESTIMATE_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "confab_subscriber_estimate_bps_bucket{{le=\"{le}\"}} {}",
                self.estimates[i].load(Relaxed)
            );
        }
        let all = self.estimates[ESTIMATE_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            s,
            "confab_subscriber_estimate_bps_bucket{{le=\"+Inf\"}} {all}\nconfab_subscriber_estimate_bps_gcount {all}\nconfab_subscriber_estimate_bps_gsum {}",
            self.estimates_sum.load(Relaxed)
        );
        for (name, help, v) in [
            (
                "confab_probes_total",
                "Bandwidth probes sent to subscribers (padding above the estimate).",
                &self.probes,
            ),
            (
                "confab_probes_raised_total",
                "Bandwidth probes that raised the subscriber's estimate.",
                &self.probes_raised,
            ),
            (
                "confab_refused_resends_total",
                "Packets subscribers asked to be resent (NACK) beyond their retransmission budget, a quarter of their estimate.",
                &self.refused_resends,
            ),
            (
                "confab_paced_drops_total",
                "Video packets a subscriber's pacer dropped because its queue was full.",
                &self.paced_drops,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        s
    }
}
