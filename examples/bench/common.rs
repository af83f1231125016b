//! Shared helpers of the bench workloads: options, percentiles, process CPU and RSS.

use std::collections::HashMap;
use std::time::Duration;

/// `--key value` options.
pub(crate) struct Opts(HashMap<String, String>);

impl Opts {
    pub(crate) fn parse(args: &[String]) -> Self {
        let mut m = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(k) = a.strip_prefix("--") {
                let v = it.next().cloned().unwrap_or_default();
                m.insert(k.to_string(), v);
            }
        }
        Self(m)
    }
    pub(crate) fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        self.0.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
    }
    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
    #[allow(dead_code)]
    pub(crate) fn string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// Percentile with linear interpolation between closest ranks (numpy's default).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Process CPU time (user + system) from /proc/self/stat.
#[allow(dead_code)]
pub(crate) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the comm field.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set size in MB from /proc/self/status.
#[allow(dead_code)]
pub(crate) fn rss_mb() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return 0.0 };
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot build the tokio runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// Tiny seeded generator (SplitMix64) so trials are repeatable without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (hi - lo) * ((z >> 11) as f64 / (1u64 << 53) as f64)
    }
}
