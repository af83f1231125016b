//! W5: memory of idle pipelines (the W4 chain, built and started, fed nothing). Each K runs in a
//! fresh child process so allocator state from one K does not colour the next.

use std::time::Duration;

use serde_json::{Value, json};
use voxline::pipeline::PipelineTask;

use crate::common::{Opts, rss_mb, runtime};
use crate::w4::{build, params};

fn measure(k: usize, vad: bool) -> Value {
    let rt = runtime();
    rt.block_on(async move {
        let base = rss_mb();
        let mut keep = Vec::with_capacity(k);
        for _ in 0..k {
            keep.push(PipelineTask::new(build(vad, |_| {}), params()).spawn());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_mb();
        for (h, _) in &keep {
            let _ = h.cancel();
        }
        json!({"base_mb": base, "delta_mb": rss - base})
    })
}

fn child(k: usize, vad: bool) -> Option<Value> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe)
        .args(["w5", "--child", &k.to_string(), "--vad", if vad { "1" } else { "0" }])
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()?;
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).ok()
}

pub(crate) fn main(args: &[String]) {
    let o = Opts::parse(args);
    if o.has("child") {
        let k: usize = o.get("child", 1);
        let vad = o.get::<u8>("vad", 1) == 1;
        println!("{}", measure(k, vad));
        return;
    }
    let k: usize = o.get("pipelines", 100).max(2);
    let get = |v: &Option<Value>, key: &str| v.as_ref().and_then(|v| v[key].as_f64()).unwrap_or(f64::NAN);
    let (one, many) = (child(1, true), child(k, true));
    let (one_nv, many_nv) = (child(1, false), child(k, false));
    let per = (get(&many, "delta_mb") - get(&one, "delta_mb")) / (k - 1) as f64;
    let per_nv = (get(&many_nv, "delta_mb") - get(&one_nv, "delta_mb")) / (k - 1) as f64;
    println!(
        "{}",
        json!({
            "workload": "w5",
            "engine": "voxline",
            "pipelines": k,
            "rss_base_mb": get(&one, "base_mb"),
            "rss_1_mb": get(&one, "delta_mb"),
            "rss_100_mb": get(&many, "delta_mb"),
            "rss_per_pipeline_mb": per,
            "rss_per_pipeline_no_vad_mb": per_nv,
        })
    );
}
