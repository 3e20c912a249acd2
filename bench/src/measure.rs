//! Measurement windows: snapshots of the server (CPU, RSS, metrics), of the load generator's own
//! CPU, and of every participant's counters; a window is the difference of two snapshots.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::confab::{metric, metrics};
use crate::peer::{RtcpTotals, RxTotals};
use crate::process::{self, Server};
use crate::report::Figures;
use crate::target::Participant;

/// Per-packet overhead below the RTP payload: IPv4 20 + UDP 8 + RTP 12 + SRTP auth tag 10.
const WIRE_OVERHEAD: f64 = 50.0;

#[derive(Clone)]
pub struct Snapshot {
    at: Instant,
    server_cpu: f64,
    server_rss_kib: u64,
    forwarded: Option<f64>,
    keyframe_requests: Option<f64>,
    generator_cpu: f64,
    machine_busy: f64,
    rx: RxTotals,
    probe_rx: RxTotals,
    /// RTCP of subscribers (sent) and publishers (received).
    sub_rtcp: RtcpTotals,
    pub_rtcp: RtcpTotals,
    sent_packets: u64,
    late_ticks: u64,
}

/// Reads everything at once. `people` includes the `probes`.
pub async fn snapshot(
    server: &Server,
    people: &[&Participant],
    probes: &[&Participant],
) -> Result<Snapshot> {
    let m = match server.http {
        Some(h) => metrics(h).await.ok(),
        None => None,
    };
    let mut rx = RxTotals::default();
    let mut sub_rtcp = RtcpTotals::default();
    let mut pub_rtcp = RtcpTotals::default();
    let (mut sent_packets, mut late_ticks) = (0, 0);
    for p in people {
        rx.add(&p.rx.totals());
        let r = p.rtcp().await;
        // A participant can be both; NACK/PLI "out" are what its subscribe side sent, "in"
        // what its publish side received.
        sub_rtcp.nacks_out += r.nacks_out;
        sub_rtcp.plis_out += r.plis_out;
        pub_rtcp.nacks_in += r.nacks_in;
        pub_rtcp.plis_in += r.plis_in;
        if let Some(tx) = p.tx() {
            sent_packets += tx.video_packets.load(Relaxed) + tx.audio_packets.load(Relaxed);
            late_ticks += tx.late_ticks.load(Relaxed);
        }
    }
    let mut probe_rx = RxTotals::default();
    for p in probes {
        probe_rx.add(&p.rx.totals());
    }
    Ok(Snapshot {
        at: Instant::now(),
        server_cpu: process::cpu_seconds(server.pid)?,
        server_rss_kib: process::rss_kib(server.pid)?,
        forwarded: m
            .as_ref()
            .and_then(|m| metric(m, "confab_forwarded_packets_total")),
        keyframe_requests: m
            .as_ref()
            .and_then(|m| metric(m, "confab_keyframe_requests_total")),
        generator_cpu: process::cpu_seconds(std::process::id())?,
        machine_busy: process::machine_busy_seconds().unwrap_or(0.0),
        rx,
        probe_rx,
        sub_rtcp,
        pub_rtcp,
        sent_packets,
        late_ticks,
    })
}

/// Memory baselines a window's per-participant figures are relative to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    /// RSS before anyone joined.
    pub empty_kib: Option<u64>,
    /// RSS with only the publishers in.
    pub publishers_kib: Option<u64>,
    pub participants: usize,
    pub subscribers: usize,
}

pub fn figures(a: &Snapshot, b: &Snapshot, base: &Baseline) -> Figures {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let rx = b.rx.since(&a.rx);
    let packets = rx.video.packets + rx.audio.packets;
    let bytes = rx.video.bytes + rx.audio.bytes;
    let mut latency = rx.video.latency.clone();
    latency.add(&rx.audio.latency);
    let probe = b.probe_rx.since(&a.probe_rx);
    let mut probe_latency = probe.video.latency.clone();
    probe_latency.add(&probe.audio.latency);
    let expected = rx.video.seq.expected + rx.audio.seq.expected;
    let lost = rx.video.seq.lost() + rx.audio.seq.lost();
    let server_cpu = (b.server_cpu - a.server_cpu).max(0.0);
    let generator_cpu = (b.generator_cpu - a.generator_cpu).max(0.0);
    let others = (b.machine_busy - a.machine_busy - server_cpu - generator_cpu).max(0.0);
    let forwarded = match (a.forwarded, b.forwarded) {
        (Some(x), Some(y)) => Some((y - x).max(0.0)),
        _ => None,
    };
    let per_packet_base = forwarded.unwrap_or(packets as f64);
    let sub = b.sub_rtcp.since(&a.sub_rtcp);
    let publ = b.pub_rtcp.since(&a.pub_rtcp);
    let rss = b.server_rss_kib;
    let decode = (rx.decode != Default::default()).then_some(rx.decode);
    Figures {
        seconds: secs,
        egress_pps: packets as f64 / secs,
        egress_mbps: (bytes as f64 + WIRE_OVERHEAD * packets as f64) * 8.0 / secs / 1e6,
        forwarded_pps: forwarded.map(|f| f / secs),
        ingress_pps: b.sent_packets.saturating_sub(a.sent_packets) as f64 / secs,
        server_cpu_percent: 100.0 * server_cpu / secs,
        server_cores: 0,
        server_cpu_us_per_packet: (per_packet_base > 0.0)
            .then(|| 1e6 * server_cpu / per_packet_base),
        latency_p50_us: latency.quantile(0.5),
        latency_p99_us: latency.quantile(0.99),
        latency_p999_us: latency.quantile(0.999),
        latency_samples: latency.count(),
        probe_latency_p50_us: probe_latency.quantile(0.5),
        probe_latency_p99_us: probe_latency.quantile(0.99),
        probe_latency_p999_us: probe_latency.quantile(0.999),
        probe_latency_samples: probe_latency.count(),
        video_latency_p99_us: rx.video.latency.quantile(0.99),
        audio_latency_p99_us: rx.audio.latency.quantile(0.99),
        expected_packets: expected,
        lost_packets: lost,
        loss_percent: if expected > 0 {
            100.0 * lost as f64 / expected as f64
        } else {
            0.0
        },
        nacks_sent: sub.nacks_out,
        nacks_received: publ.nacks_in,
        plis_sent: sub.plis_out,
        plis_received: publ.plis_in,
        keyframe_requests: match (a.keyframe_requests, b.keyframe_requests) {
            (Some(x), Some(y)) => Some((y - x).max(0.0) as u64),
            _ => None,
        },
        server_rss_kib: rss,
        server_rss_per_participant_kib: base
            .empty_kib
            .filter(|_| base.participants > 0)
            .map(|e| (rss as f64 - e as f64) / base.participants as f64),
        server_rss_per_subscriber_kib: base
            .publishers_kib
            .filter(|_| base.subscribers > 0)
            .map(|p| (rss as f64 - p as f64) / base.subscribers as f64),
        generator_cpu_percent: 100.0 * generator_cpu / secs,
        other_cpu_percent: 100.0 * others / secs,
        generator_cores: 0,
        generator_late_ticks: b.late_ticks.saturating_sub(a.late_ticks),
        decode,
    }
}

/// Warm-up, then `repeats` windows of `seconds`; returns every window's figures.
pub async fn windows(
    server: &Server,
    people: &[&Participant],
    probes: &[&Participant],
    base: &Baseline,
    warmup: Duration,
    seconds: Duration,
    repeats: usize,
) -> Result<Vec<Figures>> {
    tokio::time::sleep(warmup).await;
    let server_cores = process::allowed_cpus(server.pid).unwrap_or(1);
    let generator_cores = process::allowed_cpus(std::process::id()).unwrap_or(1);
    let mut out = Vec::with_capacity(repeats);
    let mut a = snapshot(server, people, probes).await?;
    for _ in 0..repeats.max(1) {
        tokio::time::sleep(seconds).await;
        let b = snapshot(server, people, probes).await?;
        let mut f = figures(&a, &b, base);
        f.server_cores = server_cores;
        f.generator_cores = generator_cores;
        out.push(f);
        a = b;
    }
    Ok(out)
}
