//! Figures of a measurement window, their medians over repeats, the service-level objective, and
//! the run report as JSON and as a Markdown table.

use serde::{Deserialize, Serialize};

/// The service-level objective a step must meet.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Slo {
    /// p99 of added latency below this.
    pub p99_ms: f64,
    /// Loss below this percentage.
    pub loss_percent: f64,
    /// Server CPU below this percentage of the cores it may use.
    pub cpu_percent: f64,
}

/// What one window (or the median of several) measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub seconds: f64,
    /// RTP packets per second that reached subscribers.
    pub egress_pps: f64,
    /// Egress at the IP layer: payload + 50 bytes per packet (IPv4 20, UDP 8, RTP 12, SRTP
    /// tag 10).
    pub egress_mbps: f64,
    /// RTP packets per second the server says it forwarded (`confab_forwarded_packets_total`).
    pub forwarded_pps: Option<f64>,
    /// RTP packets per second the publishers sent.
    pub ingress_pps: f64,
    /// Server CPU (user + system) in % of one core.
    pub server_cpu_percent: f64,
    /// CPUs the server may run on.
    pub server_cores: usize,
    /// Server CPU time per forwarded packet (per the server's counter when it has one, else per
    /// packet received by subscribers).
    pub server_cpu_us_per_packet: Option<f64>,
    /// Receive time − send time over all packets, µs.
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    pub latency_p999_us: Option<f64>,
    pub latency_samples: u64,
    /// The same over the probe subscribers only (threads of their own: less of the
    /// generator's queueing in it). The objective is judged on these when there are probes.
    #[serde(default)]
    pub probe_latency_p50_us: Option<f64>,
    #[serde(default)]
    pub probe_latency_p99_us: Option<f64>,
    #[serde(default)]
    pub probe_latency_p999_us: Option<f64>,
    #[serde(default)]
    pub probe_latency_samples: u64,
    pub video_latency_p99_us: Option<f64>,
    pub audio_latency_p99_us: Option<f64>,
    pub expected_packets: u64,
    pub lost_packets: u64,
    pub loss_percent: f64,
    /// NACK messages the subscribers sent / the publishers received.
    pub nacks_sent: u64,
    pub nacks_received: u64,
    /// PLI/FIR the subscribers sent / the publishers received.
    pub plis_sent: u64,
    pub plis_received: u64,
    /// `confab_keyframe_requests_total` over the window.
    pub keyframe_requests: Option<u64>,
    pub server_rss_kib: u64,
    /// (RSS − RSS before any participant joined) / participants.
    pub server_rss_per_participant_kib: Option<f64>,
    /// (RSS − RSS with only the publishers) / subscribers.
    pub server_rss_per_subscriber_kib: Option<f64>,
    /// The load generator's own CPU in % of one core, and the CPUs it may use.
    pub generator_cpu_percent: f64,
    pub generator_cores: usize,
    /// Packets the publishers sent more than 20 ms late (the generator fell behind).
    pub generator_late_ticks: u64,
    /// CPU used by everything else on the machine, in % of one core: noise in the figures.
    #[serde(default)]
    pub other_cpu_percent: f64,
    /// Decoded frames (only with `--decode`).
    pub decode: Option<crate::peer::DecodeTotals>,
}

impl Figures {
    /// The p99 the objective is judged on: the probes' when there were probes.
    pub fn slo_latency_p99_us(&self) -> Option<f64> {
        if self.probe_latency_samples > 0 {
            self.probe_latency_p99_us
        } else {
            self.latency_p99_us
        }
    }

    pub fn generator_saturated(&self) -> bool {
        // Late packets count when they are more than a trace (0.5 % of those sent).
        self.generator_cpu_percent >= 90.0 * self.generator_cores.max(1) as f64
            || self.generator_late_ticks as f64 > 0.005 * self.ingress_pps * self.seconds
    }

    /// The objectives this figure misses, in words.
    pub fn violations(&self, slo: &Slo) -> Vec<String> {
        let mut v = Vec::new();
        match self.slo_latency_p99_us() {
            Some(p99) if p99 >= slo.p99_ms * 1000.0 => v.push(format!(
                "p99 latency{} {:.2} ms ≥ {} ms",
                if self.probe_latency_samples > 0 {
                    " (probes)"
                } else {
                    ""
                },
                p99 / 1000.0,
                slo.p99_ms
            )),
            _ => {}
        }
        if self.loss_percent >= slo.loss_percent {
            v.push(format!(
                "loss {:.3} % ≥ {} %",
                self.loss_percent, slo.loss_percent
            ));
        }
        let cap = slo.cpu_percent * self.server_cores.max(1) as f64;
        if self.server_cpu_percent >= cap {
            v.push(format!(
                "server CPU {:.0} % ≥ {cap:.0} % ({} core(s))",
                self.server_cpu_percent, self.server_cores
            ));
        }
        if self.egress_pps <= 0.0 {
            v.push("nothing reached the subscribers".into());
        }
        v
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_opt(v: Vec<Option<f64>>) -> Option<f64> {
    let some: Vec<f64> = v.into_iter().flatten().collect();
    (!some.is_empty()).then(|| median(some))
}

/// The median of every figure over the windows, field by field.
pub fn medians(w: &[Figures]) -> Figures {
    let f = |g: fn(&Figures) -> f64| median(w.iter().map(g).collect());
    let o = |g: fn(&Figures) -> Option<f64>| median_opt(w.iter().map(g).collect());
    let u = |g: fn(&Figures) -> u64| median(w.iter().map(|x| g(x) as f64).collect()).round() as u64;
    Figures {
        seconds: f(|x| x.seconds),
        egress_pps: f(|x| x.egress_pps),
        egress_mbps: f(|x| x.egress_mbps),
        forwarded_pps: o(|x| x.forwarded_pps),
        ingress_pps: f(|x| x.ingress_pps),
        server_cpu_percent: f(|x| x.server_cpu_percent),
        server_cores: w.first().map(|x| x.server_cores).unwrap_or(0),
        server_cpu_us_per_packet: o(|x| x.server_cpu_us_per_packet),
        latency_p50_us: o(|x| x.latency_p50_us),
        latency_p99_us: o(|x| x.latency_p99_us),
        latency_p999_us: o(|x| x.latency_p999_us),
        latency_samples: u(|x| x.latency_samples),
        probe_latency_p50_us: o(|x| x.probe_latency_p50_us),
        probe_latency_p99_us: o(|x| x.probe_latency_p99_us),
        probe_latency_p999_us: o(|x| x.probe_latency_p999_us),
        probe_latency_samples: u(|x| x.probe_latency_samples),
        video_latency_p99_us: o(|x| x.video_latency_p99_us),
        audio_latency_p99_us: o(|x| x.audio_latency_p99_us),
        expected_packets: u(|x| x.expected_packets),
        lost_packets: u(|x| x.lost_packets),
        loss_percent: f(|x| x.loss_percent),
        nacks_sent: u(|x| x.nacks_sent),
        nacks_received: u(|x| x.nacks_received),
        plis_sent: u(|x| x.plis_sent),
        plis_received: u(|x| x.plis_received),
        keyframe_requests: o(|x| x.keyframe_requests.map(|k| k as f64)).map(|k| k.round() as u64),
        server_rss_kib: u(|x| x.server_rss_kib),
        server_rss_per_participant_kib: o(|x| x.server_rss_per_participant_kib),
        server_rss_per_subscriber_kib: o(|x| x.server_rss_per_subscriber_kib),
        generator_cpu_percent: f(|x| x.generator_cpu_percent),
        generator_cores: w.first().map(|x| x.generator_cores).unwrap_or(0),
        generator_late_ticks: u(|x| x.generator_late_ticks),
        other_cpu_percent: f(|x| x.other_cpu_percent),
        decode: {
            // Summed, not a median: a single corrupt frame anywhere matters.
            let mut any = None::<crate::peer::DecodeTotals>;
            for x in w {
                if let Some(d) = &x.decode {
                    any.get_or_insert_with(Default::default).add(d);
                }
            }
            any
        },
    }
}

/// One load level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub publishers: usize,
    pub subscribers: usize,
    pub participants: usize,
    /// Median over the windows.
    pub figures: Figures,
    pub windows: Vec<Figures>,
    pub slo_ok: bool,
    pub violations: Vec<String>,
    /// The generator was at its limit, so a violation may be its own.
    pub generator_saturated: bool,
    /// Subscribers that never received media, and server errors seen.
    pub problems: Vec<String>,
}

impl Step {
    /// Going further would measure nothing useful: heavy loss, a saturated generator, or
    /// participants that could not join or receive.
    pub fn hopeless(&self) -> bool {
        self.figures.loss_percent > 5.0 || self.generator_saturated || !self.problems.is_empty()
    }
}

/// The largest load that met the objective.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capacity {
    pub subscribers: Option<usize>,
    pub participants: Option<usize>,
    /// Why the ramp stopped: `slo` (the server), `generator` (the load tool was saturated when
    /// the objective broke), `max` (never broke up to the largest step tried), `error`.
    pub stopped_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoInfo {
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub target_kbps: f64,
    pub actual_kbps: f64,
    pub loop_frames: u32,
    pub keyframe_bytes: usize,
    pub encode_seconds: f64,
}

/// The churn scenario's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Churn {
    pub cycles: usize,
    pub failed_cycles: usize,
    pub parallel: usize,
    pub seconds: f64,
    pub cycles_per_second: f64,
    pub rss_baseline_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    pub rss_growth_kib: i64,
    pub rss_growth_bytes_per_cycle: f64,
    /// RSS slope from the first sample (100 cycles) to the end, bytes per cycle: a leak shows
    /// here, a one-time rise of the allocator's high-water mark does not.
    #[serde(default)]
    pub rss_trend_bytes_per_cycle: f64,
    /// (cycles done, RSS KiB) along the way.
    pub rss_samples: Vec<(usize, u64)>,
    pub server_cpu_ms_per_cycle: f64,
    /// Participants the server reports at the end (1: only the publisher is left).
    pub participants_at_end: Option<f64>,
    pub returned_to_baseline: bool,
    pub failures: Vec<String>,
    /// From starting to join to the first keyframe (and audio), ms: when a picture could show.
    #[serde(default)]
    pub media_after_ms_p50: Option<f64>,
    #[serde(default)]
    pub media_after_ms_p99: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub scenario: String,
    pub target: String,
    pub started_unix: u64,
    pub machine: crate::process::Machine,
    pub server_cpus: Option<String>,
    pub generator_cores: usize,
    pub command: String,
    pub warmup_seconds: f64,
    pub window_seconds: f64,
    pub repeats: usize,
    pub slo: Slo,
    /// Video pacing (× bitrate) of the publishers, and probe subscribers per step.
    #[serde(default)]
    pub pacing: f64,
    #[serde(default)]
    pub probes: usize,
    pub video: Option<VideoInfo>,
    pub steps: Vec<Step>,
    pub capacity: Option<Capacity>,
    pub churn: Option<Churn>,
    pub notes: Vec<String>,
}

fn ms(us: Option<f64>) -> String {
    us.map(|v| format!("{:.2}", v / 1000.0))
        .unwrap_or_else(|| "–".into())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### {} on {} — {}\n\n{} ({} CPUs, {} MiB, Linux {}); server CPUs: {}; generator cores: {}; \
             {} s warm-up, {} × {} s windows, medians.\n\n`{}`\n\n",
            self.scenario,
            self.target,
            self.tool,
            self.machine.cpu,
            self.machine.cpus,
            self.machine.memory_mib,
            self.machine.kernel,
            self.server_cpus.as_deref().unwrap_or("not pinned"),
            self.generator_cores,
            self.warmup_seconds,
            self.repeats,
            self.window_seconds,
            self.command,
        );
        if let Some(v) = &self.video {
            s += &format!(
                "Video {}x{} @ {} fps, {:.0} kbit/s asked, {:.0} kbit/s encoded (IDR {} bytes, loop of {} frames), paced at {} × its bitrate; {} probe subscriber(s) per step.\n\n",
                v.width, v.height, v.fps, v.target_kbps, v.actual_kbps, v.keyframe_bytes, v.loop_frames, self.pacing, self.probes
            );
        }
        if !self.steps.is_empty() {
            s += "| pub | sub | egress pkt/s | egress Mbit/s | server CPU % | CPU µs/pkt | p50 ms | p99 ms | p99.9 ms | probe p50 / p99 / p99.9 ms | loss % | NACK sent/recv | PLI sent/recv | RSS KiB/sub | gen CPU % | other CPU % | SLO |\n";
            s += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
            for st in &self.steps {
                let f = &st.figures;
                let slo = if st.slo_ok {
                    "ok".to_string()
                } else {
                    format!(
                        "**{}**{}",
                        st.violations.join("; "),
                        if st.generator_saturated {
                            " (generator saturated)"
                        } else {
                            ""
                        }
                    )
                };
                s += &format!(
                    "| {} | {} | {:.0} | {:.1} | {:.0} | {} | {} | {} | {} | {} / {} / {} | {:.3} | {}/{} | {}/{} | {} | {:.0} | {:.0} | {} |\n",
                    st.publishers,
                    st.subscribers,
                    f.egress_pps,
                    f.egress_mbps,
                    f.server_cpu_percent,
                    opt(f.server_cpu_us_per_packet, 2),
                    ms(f.latency_p50_us),
                    ms(f.latency_p99_us),
                    ms(f.latency_p999_us),
                    ms(f.probe_latency_p50_us),
                    ms(f.probe_latency_p99_us),
                    ms(f.probe_latency_p999_us),
                    f.loss_percent,
                    f.nacks_sent,
                    f.nacks_received,
                    f.plis_sent,
                    f.plis_received,
                    opt(f.server_rss_per_subscriber_kib.or(f.server_rss_per_participant_kib), 0),
                    f.generator_cpu_percent,
                    f.other_cpu_percent,
                    slo,
                );
            }
            s += "\n";
        }
        if let Some(c) = &self.capacity {
            s += &format!(
                "Largest load within the SLO (p99 < {} ms, loss < {} %, server CPU < {} % of its cores): {} subscribers / {} participants (stopped by: {}).\n\n",
                self.slo.p99_ms,
                self.slo.loss_percent,
                self.slo.cpu_percent,
                c.subscribers.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
                c.participants.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
                c.stopped_by
            );
        }
        if let Some(c) = &self.churn {
            s += &format!(
                "Churn: {} cycles ({} failed, {} in parallel) in {:.0} s ({:.1}/s); server RSS {} KiB before, {} KiB peak, {} KiB after ({:+} KiB, {:.0} bytes/cycle; trend after the first 100 cycles {:.0} bytes/cycle); {:.1} ms server CPU per cycle; participants at the end: {}; back to baseline: {}; join to first keyframe p50 {} ms, p99 {} ms.\n\n",
                c.cycles,
                c.failed_cycles,
                c.parallel,
                c.seconds,
                c.cycles_per_second,
                c.rss_baseline_kib,
                c.rss_peak_kib,
                c.rss_end_kib,
                c.rss_growth_kib,
                c.rss_growth_bytes_per_cycle,
                c.rss_trend_bytes_per_cycle,
                c.server_cpu_ms_per_cycle,
                opt(c.participants_at_end, 0),
                if c.returned_to_baseline { "yes" } else { "**no**" },
                opt(c.media_after_ms_p50, 0),
                opt(c.media_after_ms_p99, 0),
            );
        }
        for n in &self.notes {
            s += &format!("- {n}\n");
        }
        s
    }
}

/// Side-by-side ratios of two reports of the same scenario (e.g. confab and Janus).
pub fn compare(a: &Report, b: &Report) -> String {
    let mut s = format!(
        "### {} : {} ratios, scenario {}\n\n",
        a.target, b.target, a.scenario
    );
    if !a.steps.is_empty() {
        s += &format!(
            "| pub | sub | CPU µs/pkt {} | {} | ratio | p99 ms {} | {} | ratio | loss % {} | {} |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            a.target, b.target, a.target, b.target, a.target, b.target
        );
    }
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "–".into(),
    };
    for sa in &a.steps {
        let Some(sb) = b
            .steps
            .iter()
            .find(|sb| sb.publishers == sa.publishers && sb.subscribers == sa.subscribers)
        else {
            continue;
        };
        let (fa, fb) = (&sa.figures, &sb.figures);
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} |\n",
            sa.publishers,
            sa.subscribers,
            opt(fa.server_cpu_us_per_packet, 2),
            opt(fb.server_cpu_us_per_packet, 2),
            ratio(fa.server_cpu_us_per_packet, fb.server_cpu_us_per_packet),
            ms(fa.slo_latency_p99_us()),
            ms(fb.slo_latency_p99_us()),
            ratio(fa.slo_latency_p99_us(), fb.slo_latency_p99_us()),
            fa.loss_percent,
            fb.loss_percent,
        );
    }
    if let (Some(ca), Some(cb)) = (&a.churn, &b.churn) {
        s += &format!(
            "\n| churn | {} | {} |\n|---|---:|---:|\n| cycles (failed) | {} ({}) | {} ({}) |\n| RSS before → after KiB | {} → {} | {} → {} |\n| growth bytes/cycle | {:.0} | {:.0} |\n| trend after 100 cycles, bytes/cycle | {:.0} | {:.0} |\n| server CPU ms/cycle | {:.1} | {:.1} |\n| join to first keyframe p50 / p99 ms | {} / {} | {} / {} |\n",
            a.target,
            b.target,
            ca.cycles,
            ca.failed_cycles,
            cb.cycles,
            cb.failed_cycles,
            ca.rss_baseline_kib,
            ca.rss_end_kib,
            cb.rss_baseline_kib,
            cb.rss_end_kib,
            ca.rss_growth_bytes_per_cycle,
            cb.rss_growth_bytes_per_cycle,
            ca.rss_trend_bytes_per_cycle,
            cb.rss_trend_bytes_per_cycle,
            ca.server_cpu_ms_per_cycle,
            cb.server_cpu_ms_per_cycle,
            opt(ca.media_after_ms_p50, 0),
            opt(ca.media_after_ms_p99, 0),
            opt(cb.media_after_ms_p50, 0),
            opt(cb.media_after_ms_p99, 0),
        );
    }
    let cap = |r: &Report| {
        r.capacity.as_ref().map(|c| {
            format!(
                "{} ({})",
                c.subscribers
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "none".into()),
                c.stopped_by
            )
        })
    };
    if let (Some(ca), Some(cb)) = (cap(a), cap(b)) {
        let r = match (
            a.capacity.as_ref().and_then(|c| c.subscribers),
            b.capacity.as_ref().and_then(|c| c.subscribers),
        ) {
            (Some(x), Some(y)) if y > 0 => format!("{:.2}", x as f64 / y as f64),
            _ => "–".into(),
        };
        s += &format!(
            "\nLargest M within the SLO: {} {ca}, {} {cb}, ratio {r}.\n",
            a.target, b.target
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_per_field() {
        let w = vec![
            Figures {
                egress_pps: 10.0,
                latency_p99_us: Some(300.0),
                server_cores: 1,
                ..Default::default()
            },
            Figures {
                egress_pps: 30.0,
                latency_p99_us: None,
                server_cores: 1,
                ..Default::default()
            },
            Figures {
                egress_pps: 20.0,
                latency_p99_us: Some(100.0),
                server_cores: 1,
                ..Default::default()
            },
        ];
        let m = medians(&w);
        assert_eq!(m.egress_pps, 20.0);
        assert_eq!(m.latency_p99_us, Some(200.0));
    }

    #[test]
    fn slo() {
        let slo = Slo {
            p99_ms: 5.0,
            loss_percent: 0.1,
            cpu_percent: 85.0,
        };
        let ok = Figures {
            egress_pps: 100.0,
            latency_p99_us: Some(4_999.0),
            loss_percent: 0.05,
            server_cpu_percent: 80.0,
            server_cores: 1,
            ..Default::default()
        };
        assert!(ok.violations(&slo).is_empty());
        let bad = Figures {
            latency_p99_us: Some(6_000.0),
            loss_percent: 0.2,
            server_cpu_percent: 170.0,
            server_cores: 2,
            ..ok.clone()
        };
        assert_eq!(bad.violations(&slo).len(), 3);
        // With probes, their p99 is the one judged.
        let probed = Figures {
            probe_latency_p99_us: Some(1_000.0),
            probe_latency_samples: 10,
            ..bad.clone()
        };
        assert_eq!(probed.violations(&slo).len(), 2);
    }
}
