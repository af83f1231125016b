#!/usr/bin/env python3
"""Score W6 (turn taking) results against the corpus manifest.

    python3 benches/w6/score.py CORPUS_DIR RESULTS.jsonl [RESULTS2.jsonl ...]   markdown table
    python3 benches/w6/score.py --json CORPUS_DIR RESULTS.jsonl ...            one JSON per file
    python3 benches/w6/score.py --selftest

A results file holds one JSON line per clip (lines without "id", e.g. summary lines, are skipped):
    {"id", "engine", "vad": [[onset_s, offset_s|null]...], "vad_decided": [[start_s, stop_s|null]...],
     "turn_ends": [t...], "barge_ins": [t...], "inferences": [{"at", "prob", "complete", "cpu_ms"}...]}
If a clip id appears again, a new run starts: each run is scored on its own and the table shows,
for every figure, the median over runs. Times are seconds from the start of the clip (stream time).

Metrics (`score(manifest, results)`; manifest = list of manifest rows, results = {id: row}):

premature end of turn (pause and filler clips)
    For every labelled mid-turn pause [ps, pe] (the caller has not finished), with resume = the
    start of the next speech interval (= pe): the pause counts as *premature* if the engine
    declared a turn end at some t with ps <= t < resume + 0.1. Reported as a rate over pauses of
    duration <= 1.0 s (`premature_pause_le1`), and separately over 1.0 < duration <= 1.5 s
    (`premature_pause_gt1`). Per clip: `premature_clips` = fraction of pause/filler clips with any
    turn end t < turn_end - 0.05 (this also catches ends declared during filler gaps or inside
    speech); `premature_complete_clips` the same over complete clips.
end-of-turn decision delay (complete, pause and filler clips)
    delay = (first declared turn end t >= turn_end - 0.05) - turn_end, where turn_end is the true end
    of the caller's last speech. p50, p90 and mean in ms over clips that have such a t; clips with
    none are `missed`. Reported over complete clips (`delay_complete_*`, the figure the targets
    p50 <= 250 ms, p90 <= 400 ms apply to) and over all turn clips (`delay_all_*`).
    Stream time: the compute time of the decision itself is not included (see cpu_ms).
false barge-ins on backchannels
    `bc_barge_clips` = fraction of backchannel clips (the bot speaks through the whole clip, the
    caller only says "mm-hmm", "yeah", ...) with >= 1 barge-in; `bc_barge_ins` = total barge-ins;
    `bc_turn_end_clips` = fraction of backchannel clips where a turn end was declared (the LLM
    would be asked to answer a backchannel).
tones (all clips with labelled tones)
    A VAD segment [on, off] (off null = end of clip) is *started by a tone* if `on` lies inside a
    tone interval (+-50 ms) and not within 50 ms of any true speech interval. It is *stretched by
    a tone* if it overlaps true speech and either starts > 100 ms before the first true speech
    interval it overlaps with a tone overlapping [on, speech start), or ends > 100 ms after the
    last true speech interval it overlaps with a tone overlapping (speech end, off]. (VAD offsets
    here are the VAD's own estimates of where speech ended, not the time it decided, so no stop
    delay is added.) `tone_started`, `tone_stretched` (target 0 each), `tone_false_segments` =
    segments in tone clips overlapping no true speech, `tone_barge_ins` = barge-ins in tone clips
    (some have the bot speaking over the tone), `tone_only_turn_ends` = turn ends declared in clips
    with no caller speech.
CPU per turn decision
    `cpu_ms_mean`, `cpu_ms_p50` over all inferences (one end-of-turn model evaluation each), and
    `inferences_per_clip`.
Percentiles: linear interpolation between closest ranks (numpy's default).
"""

import json
import math
import os
import statistics
import sys

SLACK_RESUME = 0.1
SLACK_TURN_END = 0.05
TONE_SLACK = 0.05
SPEECH_SLACK = 0.05
STRETCH = 0.1


def pct(vals, q):
    v = sorted(vals)
    if not v:
        return None
    k = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def rate(num, den):
    return num / den if den else None


def load_manifest(corpus_dir):
    with open(os.path.join(corpus_dir, "manifest.jsonl")) as f:
        return [json.loads(x) for x in f if x.strip()]


def load_runs(path):
    """[{id: row}, ...]: a new run starts whenever a clip id repeats."""
    runs = [{}]
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "id" not in row:
                continue
            if row["id"] in runs[-1]:
                runs.append({})
            runs[-1][row["id"]] = row
    return [r for r in runs if r]


def _overlaps(a0, a1, b0, b1):
    return a0 < b1 and b0 < a1


def score(manifest, results):
    """Figures for one run of one engine; see the module docstring for the definitions."""
    prem_le1 = [0, 0]
    prem_gt1 = [0, 0]
    prem_clips = [0, 0]
    prem_complete = [0, 0]
    delays_complete, delays_all = [], []
    # When the LLM is asked: the turn end, or earlier for an engine that speculates
    # (`llm_requests`, one per turn end, same order); Pipecat asks at the turn end.
    req_complete = []
    missed_complete = missed_all = 0
    bc = {"clips": 0, "barge": 0, "barge_ins": 0, "turn_end": 0}
    tone = {"started": 0, "stretched": 0, "false": 0, "barge_ins": 0, "only_turn_ends": 0, "clips": 0}
    cpu = []
    n_inf = 0
    scored = 0
    for clip in manifest:
        r = results.get(clip["id"])
        if r is None:
            continue
        scored += 1
        cat = clip["category"]
        ends = sorted(r.get("turn_ends") or [])
        barges = r.get("barge_ins") or []
        speech = clip["speech"]
        te = clip.get("turn_end")
        for inf in r.get("inferences") or []:
            n_inf += 1
            if isinstance(inf.get("cpu_ms"), (int, float)):
                cpu.append(inf["cpu_ms"])

        if cat in ("pause", "filler"):
            for ps, pe in clip["pauses"]:
                resume = min((s for s, _ in speech if s >= pe - 1e-6), default=pe)
                hit = any(ps <= t < resume + SLACK_RESUME for t in ends)
                bucket = prem_le1 if pe - ps <= 1.0 + 1e-9 else prem_gt1
                bucket[0] += hit
                bucket[1] += 1
        if te is not None and cat in ("pause", "filler", "complete"):
            early = any(t < te - SLACK_TURN_END for t in ends)
            b = prem_complete if cat == "complete" else prem_clips
            b[0] += early
            b[1] += 1
            after = [t for t in ends if t >= te - SLACK_TURN_END]
            if after:
                d = (after[0] - te) * 1000.0
                delays_all.append(d)
                if cat == "complete":
                    delays_complete.append(d)
                    reqs = r.get("llm_requests")
                    raw_ends = r.get("turn_ends") or []
                    if reqs and len(reqs) == len(raw_ends):
                        req = reqs[raw_ends.index(after[0])]
                        req_complete.append((req - te) * 1000.0)
                    else:
                        req_complete.append(d)
            else:
                missed_all += 1
                missed_complete += cat == "complete"
        if cat == "backchannel":
            bc["clips"] += 1
            bc["barge"] += bool(barges)
            bc["barge_ins"] += len(barges)
            bc["turn_end"] += bool(ends)
        if clip["tones"]:
            tone["clips"] += 1
            tone["barge_ins"] += len(barges)
            if not speech:
                tone["only_turn_ends"] += len(ends)
            for seg in r.get("vad") or []:
                on = seg[0]
                off = seg[1] if seg[1] is not None else clip["duration_s"]
                near_speech = any(s - SPEECH_SLACK <= on <= e + SPEECH_SLACK for s, e in speech)
                in_tone = any(ts - TONE_SLACK <= on <= te_ + TONE_SLACK for ts, te_, _ in clip["tones"])
                if in_tone and not near_speech:
                    tone["started"] += 1
                ov = [(s, e) for s, e in speech if _overlaps(on, off, s, e)]
                if not ov:
                    tone["false"] += 1
                    continue
                s0, e1 = ov[0][0], ov[-1][1]
                early = on < s0 - STRETCH and any(_overlaps(on, s0, ts, te_) for ts, te_, _ in clip["tones"])
                late = off > e1 + STRETCH and any(_overlaps(e1, off, ts, te_) for ts, te_, _ in clip["tones"])
                tone["stretched"] += bool(early or late)

    def stats(prefix, d, missed):
        return {f"{prefix}_p50_ms": pct(d, 50), f"{prefix}_p90_ms": pct(d, 90),
                f"{prefix}_mean_ms": statistics.fmean(d) if d else None,
                f"{prefix}_n": len(d), f"{prefix}_missed": missed}

    out = {
        "clips_scored": scored,
        "premature_pause_le1": rate(*prem_le1), "premature_pause_le1_n": prem_le1[1],
        "premature_pause_le1_count": prem_le1[0],
        "premature_pause_gt1": rate(*prem_gt1), "premature_pause_gt1_n": prem_gt1[1],
        "premature_clips": rate(*prem_clips), "premature_clips_n": prem_clips[1],
        "premature_complete_clips": rate(*prem_complete),
    }
    out.update(stats("delay_complete", delays_complete, missed_complete))
    out.update(stats("delay_all", delays_all, missed_all))
    out.update(stats("request_complete", req_complete, missed_complete))
    out.update({
        "bc_barge_clips": rate(bc["barge"], bc["clips"]), "bc_clips": bc["clips"],
        "bc_barge_ins": bc["barge_ins"], "bc_turn_end_clips": rate(bc["turn_end"], bc["clips"]),
        "tone_clips": tone["clips"], "tone_started": tone["started"], "tone_stretched": tone["stretched"],
        "tone_false_segments": tone["false"], "tone_barge_ins": tone["barge_ins"],
        "tone_only_turn_ends": tone["only_turn_ends"],
        "cpu_ms_mean": statistics.fmean(cpu) if cpu else None, "cpu_ms_p50": pct(cpu, 50),
        "inferences": n_inf, "inferences_per_clip": rate(n_inf, scored),
    })
    return out


ROWS = [
    ("premature_pause_le1", "premature end of turn, pauses ≤ 1.0 s (target ≤ 3%)", "pct"),
    ("premature_pause_le1_n", "  pauses ≤ 1.0 s", "int"),
    ("premature_pause_gt1", "premature end of turn, pauses 1.0–1.5 s", "pct"),
    ("premature_clips", "pause/filler clips with an early turn end", "pct"),
    ("premature_complete_clips", "complete clips with an early turn end", "pct"),
    ("delay_complete_p50_ms", "end of speech → turn decision p50, complete (ms, target ≤ 250)", "ms"),
    ("delay_complete_p90_ms", "end of speech → turn decision p90, complete (ms, target ≤ 400)", "ms"),
    ("delay_complete_mean_ms", "end of speech → turn decision mean, complete (ms)", "ms"),
    ("request_complete_p50_ms", "end of speech → LLM request sent p50, complete (ms, target ≤ 250)", "ms"),
    ("request_complete_p90_ms", "end of speech → LLM request sent p90, complete (ms, target ≤ 400)", "ms"),
    ("delay_complete_missed", "complete clips with no turn decision", "int"),
    ("delay_all_p50_ms", "decision delay p50, complete+pause+filler (ms)", "ms"),
    ("delay_all_p90_ms", "decision delay p90, complete+pause+filler (ms)", "ms"),
    ("delay_all_missed", "turn clips with no turn decision", "int"),
    ("bc_barge_clips", "false barge-ins: backchannel clips interrupting the bot", "pct"),
    ("bc_turn_end_clips", "backchannel clips with a turn end (LLM asked)", "pct"),
    ("tone_started", "VAD segments started by a tone (target 0)", "int"),
    ("tone_stretched", "VAD segments stretched by a tone (target 0)", "int"),
    ("tone_false_segments", "VAD segments in tone clips with no speech", "int"),
    ("tone_barge_ins", "barge-ins in tone clips", "int"),
    ("tone_only_turn_ends", "turn ends in tone-only clips", "int"),
    ("cpu_ms_mean", "CPU per turn decision, mean (ms)", "ms2"),
    ("cpu_ms_p50", "CPU per turn decision, p50 (ms)", "ms2"),
    ("inferences_per_clip", "turn-model inferences per clip", "f2"),
]


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "int":
        return f"{v:g}"
    if kind == "ms":
        return f"{v:.0f}"
    return f"{v:.2f}"


def median_scores(runs_scores):
    keys = runs_scores[0].keys()
    out = {}
    for k in keys:
        vals = [s[k] for s in runs_scores if isinstance(s.get(k), (int, float))]
        out[k] = statistics.median(vals) if vals else None
    return out


def engine_name(path, runs):
    for run in runs:
        for row in run.values():
            if row.get("engine"):
                return row["engine"]
    return os.path.basename(path)


def table(manifest, paths):
    cols = []
    for p in paths:
        runs = load_runs(p)
        if not runs:
            cols.append((os.path.basename(p), None, 0))
            continue
        cols.append((engine_name(p, runs), median_scores([score(manifest, r) for r in runs]), len(runs)))
    lines = ["| W6 turn taking | " + " | ".join(f"{n} ({k} run{'s' * (k != 1)})" for n, _, k in cols) + " |",
             "| --- |" + " ---: |" * len(cols)]
    for key, label, kind in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt(s.get(key) if s else None, kind) for _, s, _ in cols) + " |")
    cats = {}
    for c in manifest:
        cats[c["category"]] = cats.get(c["category"], 0) + 1
    lines.append("")
    lines.append(f"Corpus: {len(manifest)} clips ({', '.join(f'{v} {k}' for k, v in cats.items())}); "
                 "medians over runs; delays in stream time, a model verdict stamped when its inference returned.")
    return "\n".join(lines)


def selftest():
    man = [
        {"id": "c", "category": "complete", "duration_s": 6.0, "speech": [[0.5, 2.0]], "turn_end": 2.0,
         "pauses": [], "bot_speaking": [], "tones": []},
        {"id": "p", "category": "pause", "duration_s": 8.0,
         "speech": [[0.5, 1.5], [2.1, 3.0], [4.2, 5.0]], "turn_end": 5.0,
         "pauses": [[1.5, 2.1], [3.0, 4.2]], "bot_speaking": [], "tones": []},
        {"id": "b", "category": "backchannel", "duration_s": 5.0, "speech": [[0.6, 1.0]], "turn_end": None,
         "pauses": [], "bot_speaking": [[0.0, 5.0]], "tones": []},
        {"id": "t", "category": "tone", "duration_s": 9.0, "speech": [[4.0, 5.5]], "turn_end": 5.5,
         "pauses": [], "bot_speaking": [[0.0, 3.5]], "tones": [[0.5, 2.5, "ringback"]]},
    ]

    def res(cid, vad, ends, barges=(), cpu=1.0):
        return {"id": cid, "engine": "x", "vad": vad, "vad_decided": vad, "turn_ends": list(ends),
                "barge_ins": list(barges), "inferences": [{"at": t, "prob": 0.9, "complete": True,
                                                           "cpu_ms": cpu} for t in ends]}

    oracle = {c["id"]: res(c["id"], c["speech"], [c["turn_end"]] if c["turn_end"] else []) for c in man}
    s = score(man, oracle)
    assert s["premature_pause_le1"] == 0.0 and s["premature_pause_le1_n"] == 1, s
    assert s["premature_pause_gt1"] == 0.0 and s["premature_pause_gt1_n"] == 1, s
    assert s["premature_clips"] == 0.0 and s["premature_complete_clips"] == 0.0, s
    assert s["delay_complete_p50_ms"] == 0.0 and s["delay_complete_p90_ms"] == 0.0, s
    assert s["delay_all_n"] == 2 and s["delay_all_missed"] == 0 and s["delay_all_p90_ms"] == 0.0, s
    assert s["bc_barge_clips"] == 0.0 and s["bc_turn_end_clips"] == 0.0, s
    assert s["tone_started"] == 0 and s["tone_stretched"] == 0 and s["tone_false_segments"] == 0, s
    assert s["tone_barge_ins"] == 0 and s["cpu_ms_mean"] == 1.0 and s["inferences_per_clip"] == 0.75, s

    bad = {
        "c": res("c", [[0.5, 2.0]], [1.2, 2.6]),                      # early end, then 600 ms late
        "p": res("p", [[0.5, 1.5], [2.1, 3.0], [4.2, 5.0]], [1.8, 3.9]),  # ends in both pauses, misses the real end
        "b": res("b", [[0.6, 1.0]], [1.3], barges=[0.8]),             # interrupts the bot, asks the LLM
        "t": res("t", [[0.7, 2.4], [3.8, 5.5]], [5.7], barges=[0.9]),  # tone starts a segment; stretched start
    }
    w = score(man, bad)
    assert w["premature_pause_le1"] == 1.0 and w["premature_pause_gt1"] == 1.0, w
    assert w["premature_clips"] == 1.0 and w["premature_complete_clips"] == 1.0, w
    assert w["delay_complete_p50_ms"] > 500 and w["delay_complete_missed"] == 0, w
    assert w["delay_all_missed"] == 1, w
    assert w["bc_barge_clips"] == 1.0 and w["bc_turn_end_clips"] == 1.0, w
    assert w["tone_started"] == 1 and w["tone_false_segments"] == 1 and w["tone_barge_ins"] == 1, w
    stretched = dict(bad, t=res("t", [[2.0, 5.5]], [5.7]))  # one segment from inside the tone over the speech
    assert score(man, stretched)["tone_stretched"] == 1
    late = dict(oracle, t=res("t", [[4.0, 5.5]], [5.7]))
    t2 = dict(man[3], tones=[[0.5, 2.5, "ringback"], [5.7, 6.5, "dtmf"]])
    assert score(man[:3] + [t2], dict(late, t=res("t", [[4.0, 6.4]], [6.6])))["tone_stretched"] == 1
    assert score(man[:3] + [t2], late)["tone_stretched"] == 0
    # runs: a repeated id starts a new run
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for run in (oracle, bad):
            for row in run.values():
                f.write(json.dumps(row) + "\n")
            f.write(json.dumps({"workload": "w6", "engine": "x"}) + "\n")
    runs = load_runs(f.name)
    assert len(runs) == 2 and set(runs[0]) == {"c", "p", "b", "t"}
    print(table(man, [f.name]))
    os.unlink(f.name)
    assert pct([1, 2, 3, 4], 50) == 2.5 and pct([0, 10], 90) == 9.0
    print("selftest OK")


def main(argv):
    if argv[:1] == ["--selftest"]:
        selftest()
        return 0
    as_json = argv[:1] == ["--json"]
    if as_json:
        argv = argv[1:]
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    manifest = load_manifest(argv[0])
    if as_json:
        for p in argv[1:]:
            runs = load_runs(p)
            print(json.dumps({"file": p, "engine": engine_name(p, runs) if runs else None, "runs": len(runs),
                              **(median_scores([score(manifest, r) for r in runs]) if runs else {})}))
        return 0
    print(table(manifest, argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
