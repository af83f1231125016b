//! Logs, traces and metrics.
//!
//! - Logs: `tracing-subscriber` JSON (one object per line) with the current span and the span
//!   list, so every line logged inside a call carries the call span's `call_sid`,
//!   `customer_id` (recorded once a skill identifies the caller) and `turn` (updated as turns
//!   go by: the JSON formatter merges re-recorded span fields).
//! - Traces: the same spans go to OpenTelemetry through `tracing-opentelemetry` when a tracer
//!   is installed: OTLP/HTTP behind the `otlp` feature, an in-memory exporter in tests.
//!   Spans: `call`, `turn`, `tool_execution`, `workflow_step`, `external_api`, `post_call_job`.
//! - Metrics: a small Prometheus registry (counters, gauges, fixed-bucket histograms) rendered
//!   as text on `/metrics`. Hand-rolled rather than a metrics facade: a dozen series, no
//!   global recorder to install, and the text format is trivial.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::ObservabilityConfig;
use voxline::pipeline::sync::lock;

const LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];
const DURATION_BUCKETS: &[f64] = &[5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    n: u64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, n: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.n += 1;
    }
}

type Series = (&'static str, String);

/// Process-wide metrics (one registry per process, as Prometheus scrapes per instance).
#[derive(Default)]
pub struct Metrics {
    calls_active: AtomicI64,
    counters: Mutex<BTreeMap<Series, u64>>,
    hists: Mutex<BTreeMap<Series, Hist>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The registry.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::default)
}

/// `ok`, `error` or `timeout` from a skill's result JSON.
pub(crate) fn tool_outcome(result: &Value) -> &'static str {
    if result["success"] == true {
        "ok"
    } else if result["error"].as_str().is_some_and(|e| e.contains("timed out")) {
        "timeout"
    } else {
        "error"
    }
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " ")
}

impl Metrics {
    fn inc(&self, name: &'static str, labels: String, by: u64) {
        *lock(&self.counters).entry((name, labels)).or_default() += by;
    }

    fn observe(&self, name: &'static str, labels: String, bounds: &'static [f64], v: f64) {
        lock(&self.hists).entry((name, labels)).or_insert_with(|| Hist::new(bounds)).observe(v);
    }

    /// A call's media stream was accepted.
    pub fn call_started(&self) {
        self.calls_active.fetch_add(1, Ordering::Relaxed);
        self.inc("voxline_calls_total", String::new(), 1);
    }

    /// A call ended (before its post-call job).
    pub fn call_ended(&self, end_reason: &str, duration_secs: f64) {
        self.calls_active.fetch_sub(1, Ordering::Relaxed);
        let reason = end_reason.split(':').next().unwrap_or(end_reason);
        self.inc("voxline_calls_ended_total", format!("end_reason=\"{}\"", label_value(reason)), 1);
        self.observe("voxline_call_duration_seconds", String::new(), DURATION_BUCKETS, duration_secs);
    }

    /// The post-call workflow decided whether the call was resolved.
    pub fn call_resolved(&self, resolved: bool) {
        self.inc("voxline_calls_resolved_total", format!("resolved=\"{resolved}\""), 1);
    }

    /// A tool ran.
    pub fn tool_call(&self, tool: &str, outcome: &str) {
        self.inc("voxline_tool_calls_total", format!("tool=\"{}\",outcome=\"{outcome}\"", label_value(tool)), 1);
    }

    /// A provider (or other processor) reported an error.
    pub fn provider_error(&self, kind: &str) {
        self.inc("voxline_provider_errors_total", format!("kind=\"{}\"", label_value(kind)), 1);
    }

    /// One turn's latency split, in milliseconds.
    pub fn turn(&self, stt: Option<f64>, llm_ttfb: Option<f64>, tts_ttfb: Option<f64>, total: Option<f64>) {
        let h = "voxline_turn_latency_seconds";
        for (stage, v) in [("stt", stt), ("llm_ttfb", llm_ttfb), ("tts_ttfb", tts_ttfb), ("total", total)] {
            if let Some(v) = v {
                self.observe(h, format!("stage=\"{stage}\""), LATENCY_BUCKETS, v / 1e3);
            }
        }
        // What the engine itself adds: everything between the stages' own waits.
        if let (Some(s), Some(l), Some(t), Some(tot)) = (stt, llm_ttfb, tts_ttfb, total) {
            self.observe(h, "stage=\"engine\"".into(), LATENCY_BUCKETS, ((tot - s - l - t) / 1e3).max(0.0));
        }
    }

    /// Input audio frames the lossy input lane dropped (backpressure).
    pub fn frames_dropped(&self, n: u64) {
        if n > 0 {
            self.inc("voxline_frames_dropped_total", "lane=\"input_audio\"".into(), n);
        }
    }

    /// A request was refused by the rate limiter.
    pub fn rate_limited(&self, class: &str) {
        self.inc("voxline_rate_limited_total", format!("class=\"{}\"", label_value(class)), 1);
    }

    /// A post-call job attempt finished.
    pub fn job(&self, outcome: &str) {
        self.inc("voxline_jobs_total", format!("outcome=\"{}\"", label_value(outcome)), 1);
    }

    /// Prometheus text exposition; `gauges` are extra point-in-time values (queue depths…).
    pub fn render(&self, gauges: &[(&str, &str, String, f64)]) -> String {
        // `voxline_calls_active` itself is served by the admin module's counters.
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), v) in lock(&self.counters).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", braces(labels));
        }
        let resolved: u64 = lock(&self.counters)
            .iter()
            .filter(|((n, l), _)| *n == "voxline_calls_resolved_total" && l.contains("true"))
            .map(|(_, v)| *v)
            .sum();
        let decided: u64 = lock(&self.counters)
            .iter()
            .filter(|((n, _), _)| *n == "voxline_calls_resolved_total")
            .map(|(_, v)| *v)
            .sum();
        if decided > 0 {
            let _ = writeln!(out, "# TYPE voxline_resolution_rate_instance gauge");
            let _ = writeln!(out, "voxline_resolution_rate_instance {}", resolved as f64 / decided as f64);
        }
        let mut last = "";
        for ((name, labels), h) in lock(&self.hists).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            let sep = if labels.is_empty() { "" } else { "," };
            for (b, c) in h.bounds.iter().zip(&h.counts) {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.n);
            let _ = writeln!(out, "{name}_sum{} {}", braces(labels), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", braces(labels), h.n);
        }
        let mut last = "";
        for (name, help, labels, v) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", braces(labels));
        }
        out
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() { String::new() } else { format!("{{{labels}}}") }
}

/// Flushes and shuts the tracer provider down on drop (end of `main`).
pub struct TracingGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl std::fmt::Debug for TracingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingGuard").finish_non_exhaustive()
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Install the global subscriber: env filter (`RUST_LOG`, else `default_filter`), JSON or text
/// lines on stdout, and OpenTelemetry when an OTLP endpoint is configured.
pub fn init(cfg: &ObservabilityConfig, default_filter: &str) -> anyhow::Result<TracingGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let provider = match &cfg.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(endpoint)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("voxline-phone-bot"))
    });
    let (json, text) = if cfg.log_format == "json" {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .with_writer(std::io::stdout);
        (Some(layer), None)
    } else {
        (None, Some(tracing_subscriber::fmt::layer().with_writer(std::io::stdout)))
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    Ok(TracingGuard { provider })
}

#[cfg(feature = "otlp")]
fn otlp_provider(endpoint: &str) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| anyhow::anyhow!("otlp exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("voxline-phone-bot").build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(not(feature = "otlp"))]
fn otlp_provider(_endpoint: &str) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    anyhow::bail!("observability.otlp_endpoint is set but the phone bot was built without the `otlp` feature")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    #[test]
    fn prometheus_text() {
        let m = Metrics::default();
        m.call_started();
        m.tool_call("check_order_status", "ok");
        m.turn(Some(100.0), Some(200.0), Some(150.0), Some(500.0));
        m.call_ended("bot_ended", 42.0);
        m.call_resolved(true);
        let t = m.render(&[("voxline_jobs_queued", "Queued jobs.", String::new(), 3.0)]);
        assert_eq!(m.calls_active.load(Ordering::Relaxed), 0);
        assert!(t.contains("voxline_tool_calls_total{tool=\"check_order_status\",outcome=\"ok\"} 1"), "{t}");
        assert!(t.contains("voxline_turn_latency_seconds_bucket{stage=\"engine\",le=\"0.05\"} 1"), "{t}");
        assert!(t.contains("voxline_call_duration_seconds_count 1"), "{t}");
        assert!(t.contains("voxline_resolution_rate_instance 1"), "{t}");
        assert!(t.contains("voxline_jobs_queued 3"), "{t}");
    }

    /// Workflow steps and the summary LLM call become OpenTelemetry spans, nested in the job.
    #[tokio::test]
    async fn workflow_spans_are_exported() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _one_at_a_time = crate::fleet::workflow::tests::WORKFLOW_RUNS.lock().await;
        let _guard = tracing::subscriber::set_default(subscriber);
        let store = crate::fleet::store::tests::temp_store().await;
        let cfg = crate::config::Config::default();
        let llm = crate::fleet::workflow::SummaryLlm {
            http: reqwest::Client::new(),
            provider: "openai".into(),
            base_url: "http://127.0.0.1:9/v1".into(),
            model: "m".into(),
            api_key: None,
        };
        let mut rec = crate::call::recorder::CallRecord {
            call_sid: "CAotel".into(),
            from: "+15550001111".into(),
            ..Default::default()
        };
        rec.transcript.push(crate::call::recorder::TranscriptLine {
            role: "user".into(),
            text: "hi".into(),
            ..Default::default()
        });
        let input = crate::fleet::workflow::WorkflowInput {
            record: &rec,
            customer_id: None,
            end_reason: "x",
            transferred: false,
            ended_by_bot: false,
        };
        let job = crate::fleet::workflow::JobRef { id: "JOB-CAotel", owner: "t", stall_after: None };
        {
            use tracing::Instrument as _;
            let span = tracing::info_span!("post_call_job", call_sid = "CAotel");
            crate::fleet::workflow::run(&cfg, &store, &llm, input, &job).instrument(span).await;
        }
        let _ = provider.force_flush();
        let spans = exporter.get_finished_spans().unwrap_or_default();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        // Spans are exported when they close; a span whose context a still-pooled connection
        // task captured (the job span, the summary step) closes later, so only closed ones
        // are checked here: the effect steps, and the external call nested in the summary.
        assert!(names.iter().filter(|n| **n == "workflow_step").count() >= 3, "{names:?}");
        assert!(names.contains(&"external_api"), "{names:?}");
        let trace = spans.first().map(|s| s.span_context.trace_id());
        assert!(spans.iter().all(|s| Some(s.span_context.trace_id()) == trace), "one trace per job: {names:?}");
    }
}
