//! A seconds-long run of `confab-bench fanout` against a freshly started confab, so that the
//! load tool cannot rot: the JSON must show media reaching subscribers with latency figures.
//!
//! The server binary is the `confab` next to this package's binary in the same target directory
//! (`cargo test --workspace` builds it), or `CONFAB_BIN`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn confab_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONFAB_BIN") {
        return PathBuf::from(p);
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_confab-bench"));
    bench.with_file_name(format!("confab{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn fanout_smoke() {
    let server = confab_bin();
    assert!(
        server.exists(),
        "no confab binary at {}: build it first (cargo build -p confab) or set CONFAB_BIN",
        server.display()
    );
    let out = std::env::temp_dir().join(format!("confab-bench-smoke-{}.json", std::process::id()));
    let started = Instant::now();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_confab-bench"))
            .args(["fanout", "--server"])
            .arg(&server)
            .args([
                "--subscribers",
                "2",
                "--seconds",
                "3",
                "--warmup",
                "1",
                "--repeats",
                "1",
                "--video",
                "320x180",
                "--bitrate",
                "300k",
                "--loop-seconds",
                "2",
                "--timeout",
                "50",
                "--json",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting confab-bench"),
    );
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("waiting for confab-bench") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(55),
            "confab-bench ran for more than 55 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        status.success(),
        "confab-bench failed ({status}):\n{stderr}"
    );
    let text = std::fs::read_to_string(&out).expect("the JSON report");
    let _ = std::fs::remove_file(&out);
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let f = &v["steps"][0]["figures"];
    let num = |k: &str| f[k].as_f64().unwrap_or(0.0);
    assert!(num("egress_pps") > 0.0, "no egress:\n{text}\n{stderr}");
    assert!(num("forwarded_pps") > 0.0, "no forwarded packets:\n{text}");
    assert!(num("egress_mbps") > 0.0, "no egress bitrate:\n{text}");
    assert!(num("latency_p50_us") > 0.0, "no latency p50:\n{text}");
    assert!(num("latency_p99_us") > 0.0, "no latency p99:\n{text}");
    assert!(
        f["latency_samples"].as_u64().unwrap_or(0) > 0,
        "no latency samples:\n{text}"
    );
    assert!(
        num("server_cpu_us_per_packet") > 0.0,
        "no CPU per packet:\n{text}"
    );
    assert!(
        v["steps"][0]["problems"]
            .as_array()
            .is_some_and(|p| p.is_empty()),
        "problems:\n{text}"
    );
}
