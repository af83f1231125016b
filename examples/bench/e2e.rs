//! E2E: what the engine adds to a phone-bot turn, end to end.
//!
//! The phone bot against the in-repo emulators with zero configured provider delay: the caller's
//! last voiced audio frame → the first bot audio frame, over many turns, split into the VAD's stop
//! confirmation (reported separately, not engine latency), the providers (STT, LLM TTFB, TTS
//! TTFB: here the emulators plus loopback) and what is left: the engine.
//!
//! Design: the phone bot is its own application crate (`examples/phone-bot`), which this binary
//! does not link, so it runs as a subprocess, `phone-bot simulate --bench-turns T --bench-calls C`: the real
//! server, emulators and simulated Twilio callers in one process (one clock for both ends of a
//! turn), printing one JSON line per turn (see `simulate::bench_turns`). This module aggregates
//! those lines into p50/p99. The phone bot binary is looked up next to this one
//! (`target/release/phone-bot`; build it with `cargo build --release -p
//! voxline-phone-bot`) or given with `--phone-bot PATH`.
//!
//! `bench e2e [--calls 4] [--turns 10] [--phone-bot PATH]` prints one JSON line.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::{Opts, mean, percentile};

/// The measured fields of a turn line, in output order.
const FIELDS: [&str; 7] =
    ["engine_ms", "vad_stop_ms", "stt_ms", "llm_ttfb_ms", "tts_ttfb_ms", "server_ms", "caller_ms"];

fn phone_bot(o: &Opts) -> Option<PathBuf> {
    if let Some(p) = o.string("phone-bot") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/examples/bench → target/<profile>/phone-bot
    let p = exe.parent()?.parent()?.join("phone-bot");
    p.exists().then_some(p)
}

fn summary(turns: &[Value], field: &str) -> Value {
    let mut v: Vec<f64> = turns.iter().filter_map(|t| t[field].as_f64()).filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Value::Null;
    }
    let r = |x: f64| (x * 100.0).round() / 100.0;
    json!({"p50": r(percentile(&v, 50.0)), "p99": r(percentile(&v, 99.0)), "mean": r(mean(&v)), "n": v.len()})
}

pub(crate) fn main(args: &[String]) {
    let o = Opts::parse(args);
    let calls: usize = o.get("calls", 4);
    let turns: usize = o.get("turns", 10);
    let Some(bin) = phone_bot(&o) else {
        eprintln!("phone-bot binary not found beside the bench: cargo build --release -p voxline-phone-bot");
        std::process::exit(2);
    };
    let out = Command::new(&bin)
        .args(["simulate", "--bench-turns", &turns.to_string(), "--bench-calls", &calls.to_string()])
        .env("RUST_LOG", "error")
        .stderr(Stdio::inherit())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!("{} exited with {}", bin.display(), o.status);
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("cannot run {}: {e}", bin.display());
            std::process::exit(1);
        }
    };
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut result = json!({
        "workload": "e2e",
        "engine": "voxline",
        "calls": calls,
        "turns_requested": calls * turns,
        "turns_measured": lines.len(),
        "provider_delay_ms": 0,
    });
    for f in FIELDS {
        result[f] = summary(&lines, f);
    }
    println!("{result}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_turn_lines() {
        let turns: Vec<Value> = (1..=100).map(|i| json!({"engine_ms": f64::from(i)})).collect();
        let s = summary(&turns, "engine_ms");
        assert_eq!(s["p50"], 50.5);
        assert_eq!(s["n"], 100);
        assert!(summary(&turns, "stt_ms").is_null());
    }
}
