#!/usr/bin/env python3
"""Table (medians over runs, ratio Pipecat/Voxline) and an SVG plot from compare.sh's JSON lines.

Usage: compare.py OUT_DIR BENCH_DIR w1 [w2 ...]
W6 figures come from benches/w6/score.py (corpus: $W6_CORPUS, default target/w6-corpus).
"""
import json
import os
import statistics
import subprocess
import sys


def load(out, engine, w):
    path = os.path.join(out, f"{engine}-{w}.jsonl")
    rows = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def med(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def w1_figs(rows):
    figs = {}
    for r in rows:
        for c in r.get("results", [r]):
            n, cad = c.get("processors"), c.get("cadence")
            if cad == "flat":
                figs.setdefault(f"W1 N={n} CPU per hop, flat (µs)", []).append(c.get("hop_cost_us"))
            else:
                figs.setdefault(f"W1 N={n} latency per hop, realtime p50 (µs)", []).append(c.get("hop_latency_us"))
    return figs


def score(bench_dir, row):
    """Sentences found by bench/score_segments.py for one W2 JSON line (None if it cannot run)."""
    scorer = os.path.join(bench_dir, "score_segments.py")
    truth = os.path.join(bench_dir, "audio", "call_truth.tsv")
    try:
        p = subprocess.run([sys.executable, scorer, truth], input=json.dumps(row),
                           capture_output=True, text=True, timeout=30)
        return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception:
        return None


def w6_figs(out, engine):
    """One value per run for each W6 figure (benches/w6/score.py on the per-clip lines)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "w6"))
    import score as w6
    corpus = os.environ.get("W6_CORPUS") or os.path.join(here, "..", "target", "w6-corpus")
    path = os.path.join(out, f"{engine}-w6.jsonl")
    if not os.path.exists(path) or not os.path.exists(os.path.join(corpus, "manifest.jsonl")):
        return {}
    manifest = w6.load_manifest(corpus)
    scores = [w6.score(manifest, run) for run in w6.load_runs(path)]
    figs = {}
    for key, label, kind in w6.ROWS:
        scale = 100 if kind == "pct" else 1
        unit = " (%)" if kind == "pct" else ""
        figs[f"W6 {label.strip()}{unit}"] = [s[key] * scale if s.get(key) is not None else None for s in scores]
    return figs


def figures(w, rows, bench_dir, out=None, engine=None):
    if w == "w1":
        return w1_figs(rows)
    if w == "w6":
        return w6_figs(out, engine)
    keys = {
        "w2": [("rtf", "W2 real-time factor"), ("us_per_frame", "W2 µs per 20 ms frame")],
        "w3": [("to_last_processor_p50_us", "W3 interrupt → last processor p50 (µs)"),
               ("to_last_processor_p99_us", "W3 interrupt → last processor p99 (µs)"),
               ("to_output_silent_p99_us", "W3 interrupt → output silent p99 (µs)"),
               ("chunks_after_inject", "W3 chunks started after interrupt")],
        "w4": [("max_pipelines", "W4 pipelines on one core (jitter p99 < 20 ms)"),
               ("jitter_p99_ms", "W4 jitter p99 at that K (ms)"),
               ("rss_per_pipeline_mb", "W4 RSS per pipeline (MB)")],
        "w5": [("rss_per_pipeline_mb", "W5 RSS per idle pipeline (MB)"),
               ("rss_per_pipeline_no_vad_mb", "W5 RSS per idle pipeline, no VAD (MB)")],
    }[w]
    figs = {}
    for k, label in keys:
        figs[label] = [r.get(k) for r in rows]
    if w == "w2":
        figs["W2 segments found"] = [len(r.get("segments") or []) for r in rows]
        scores = [score(bench_dir, r) for r in rows]
        figs["W2 sentences found (of 10, ±150 ms)"] = [s.get("found") if s else None for s in scores]
        figs["W2 false segments"] = [s.get("false_segments") if s else None for s in scores]
    return figs


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"


def svg_plot(out, pc_rows, vx_rows):
    """Per-hop CPU cost vs chain length, both engines (log scale)."""
    def series(rows):
        pts = {}
        for r in rows:
            for c in r.get("results", [r]):
                if c.get("cadence") == "flat" and c.get("hop_cost_us"):
                    pts.setdefault(c["processors"], []).append(c["hop_cost_us"])
        return sorted((n, statistics.median(v)) for n, v in pts.items())
    import math
    pc, vx = series(pc_rows), series(vx_rows)
    if not pc and not vx:
        return
    W, H, L, B = 560, 340, 70, 50
    xs = sorted({n for n, _ in pc + vx})
    ys = [v for _, v in pc + vx]
    lo, hi = math.log10(min(ys)) - 0.2, math.log10(max(ys)) + 0.2
    X = lambda n: L + (xs.index(n)) * (W - L - 30) / max(1, len(xs) - 1)
    Y = lambda v: H - B - (math.log10(v) - lo) * (H - B - 30) / (hi - lo)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<text x="{W/2}" y="18" text-anchor="middle">CPU per hop, flat cadence (µs, log scale) — lower is better</text>',
             f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/>',
             f'<line x1="{L}" y1="30" x2="{L}" y2="{H-B}" stroke="black"/>']
    for n in xs:
        parts.append(f'<text x="{X(n)}" y="{H-B+16}" text-anchor="middle">N={n}</text>')
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        v = 10 ** e
        if lo <= e <= hi:
            parts.append(f'<text x="{L-6}" y="{Y(v)+4}" text-anchor="end">{v:g}</text>')
            parts.append(f'<line x1="{L}" y1="{Y(v)}" x2="{W-20}" y2="{Y(v)}" stroke="#ddd"/>')
    for name, pts, color in (("Pipecat 1.14", pc, "#d9534f"), ("Voxline", vx, "#337ab7")):
        if pts:
            d = " ".join(f"{X(n)},{Y(v)}" for n, v in pts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
            for n, v in pts:
                parts.append(f'<circle cx="{X(n)}" cy="{Y(v)}" r="3" fill="{color}"/>')
            parts.append(f'<text x="{X(pts[-1][0])-4}" y="{Y(pts[-1][1])-8}" text-anchor="end" fill="{color}">{name}</text>')
    parts.append("</svg>")
    with open(os.path.join(out, "per_hop.svg"), "w") as f:
        f.write("\n".join(parts))


def main():
    out, bench_dir, workloads = sys.argv[1], sys.argv[2], sys.argv[3:]
    print("| figure | Pipecat 1.14 | Voxline | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for w in workloads:
        pc, vx = load(out, "pipecat", w), load(out, "voxline", w)
        fp, fv = figures(w, pc, bench_dir, out, "pipecat"), figures(w, vx, bench_dir, out, "voxline")
        for label in list(fp.keys()) + [k for k in fv if k not in fp]:
            a, b = med(fp.get(label, [])), med(fv.get(label, []))
            ratio = "–"
            if a is not None and b not in (None, 0):
                bigger_is_better = "pipelines on one core" in label or "sentences found" in label
                if "segments" in label or "chunks" in label or label.startswith("W6"):
                    ratio = "–"
                    print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
                    continue
                ratio = f"{(b / a if bigger_is_better else a / b):.1f}×"
            print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
        if w == "w1":
            svg_plot(out, pc, vx)
    # W6 writes one line per clip and one summary line (with "workload") per run.
    runs = len([r for r in load(out, 'voxline', workloads[0]) if "workload" in r or workloads[0] != "w6"])
    print(f"\n{runs} runs per engine; medians; ratio = how many times better Voxline is.")


if __name__ == "__main__":
    main()
