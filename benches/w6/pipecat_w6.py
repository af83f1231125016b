"""W6 turn taking, Pipecat 1.14 side: Silero VAD + LocalSmartTurnAnalyzerV3 on the W6 corpus.

    taskset -c 0 VENV/bin/python benches/w6/pipecat_w6.py CORPUS_DIR [--limit N] [--only ID,...]

Prints one JSON line per clip (schema in benches/w6/README.md) and a final summary line
{"workload": "w6", "engine": "pipecat", ...} carrying score.py's figures for this run.

Each clip is fed in *stream time* (no sleeping): mu-law -> PCM16 8 kHz (audioop.ulaw2lin, as
pipecat.audio.utils.ulaw_to_pcm does; the pipeline runs at audio_in_sample_rate=8000 so there is
no resampling), consecutive 20 ms chunks (160 samples). Stream time of chunk i = (i + 1) * 20 ms,
the moment its last sample has arrived. The analyzers are Pipecat's own objects, driven by the
calls Pipecat 1.14 makes (LLMUserAggregator with vad_analyzer=SileroVADAnalyzer(VADParams(
stop_secs=0.2)) and the default user turn strategies: VADUserTurnStartStrategy +
TurnAnalyzerUserTurnStopStrategy(LocalSmartTurnAnalyzerV3())), per audio frame:

  1. VADController._handle_vad: `await vad.analyze_audio(chunk)`; a change to SPEAKING / QUIET
     emits VADUserStarted/StoppedSpeakingFrame, which the aggregator *queues* to itself, so it is
     handled after this audio frame.
  2. UserTurnController -> TurnAnalyzerUserTurnStopStrategy._handle_input_audio:
     `append_audio(chunk, vad_user_speaking)`; COMPLETE (the smart-turn stop_secs=3 silence
     fallback) -> `analyze_end_of_turn()` (buffer already cleared: no inference) -> turn complete.
  3. the queued VAD frame: started -> user turn starts if none is active (this broadcasts the
     InterruptionFrame: a barge-in if the bot is speaking), stop strategy resets,
     `update_vad_start_secs(0.2)`; stopped -> `analyze_end_of_turn()` (one model inference),
     COMPLETE -> turn complete.
  A complete turn is declared once the inference has returned (stop + its wall time; the decision; `wait_for_transcript=False`, i.e. no STT in
  the loop — with an STT, Pipecat additionally waits for the transcript). The controller's
  user_turn_stop_timeout watchdog (5 s without turn/VAD events while a turn is open and the user
  is quiet) is applied in stream time too.
BaseSmartTurn timestamps its buffered audio with time.monotonic() (to pick the pre-speech audio and
to trim the buffer); that module's clock is replaced by the stream clock so the model sees exactly
the audio it would see in real time. Both ONNX models run with one thread (Pipecat's settings).
cpu_ms of an inference = time.process_time() around `await analyze_end_of_turn()`.
VAD boundary estimates ("vad"): onset = start of the first of the consecutive speech windows
(confidence >= 0.7 and smoothed volume >= 0.6, 256-sample windows) that confirmed the start;
offset = end of the last speech window before the run of quiet windows that confirmed the stop.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import types
import warnings

from loguru import logger

logger.remove()
logger.add(sys.stderr, level=os.environ.get("BENCH_LOG_LEVEL", "ERROR"))

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # what pipecat.audio.utils.ulaw_to_pcm uses

import numpy as np  # noqa: E402

from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState  # noqa: E402
from pipecat.audio.turn.smart_turn import base_smart_turn  # noqa: E402
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3  # noqa: E402
from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402
from pipecat.audio.vad.vad_analyzer import VADParams, VADState  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import score as w6score  # noqa: E402

SR = 8000
CHUNK = 160  # 20 ms
USER_TURN_STOP_TIMEOUT = 5.0  # UserTurnController default
STREAM_EPOCH = 1000.0  # stream clock offset (BaseSmartTurn treats monotonic() == 0 as "unset")


class StreamClock:
    now = STREAM_EPOCH


CLOCK = StreamClock()
# BaseSmartTurn reads time.monotonic() for buffer timestamps; give it the stream clock.
base_smart_turn.time = types.SimpleNamespace(monotonic=lambda: CLOCK.now, perf_counter=time.perf_counter)


def emit(obj):
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def r3(x):
    return round(x, 3)


class InstrumentedSilero(SileroVADAnalyzer):
    """Pipecat's Silero VAD, unchanged, recording each window's speaking decision."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.windows = []  # per window: [confidence, smoothed volume]

    def voice_confidence(self, buffer):
        c = super().voice_confidence(buffer)
        self.windows.append([float(np.asarray(c).reshape(-1)[0]), None])
        return c

    def _get_smoothed_volume(self, audio):
        v = super()._get_smoothed_volume(audio)
        self.windows[-1][1] = v
        return v

    def speaking(self, k):
        c, v = self.windows[k]
        return c >= self._params.confidence and v >= self._params.min_volume

    def onset_estimate(self):
        k = len(self.windows) - 1
        while k > 0 and self.speaking(k - 1):
            k -= 1
        return k * self.num_frames_required() / self.sample_rate

    def offset_estimate(self):
        k = len(self.windows) - 1
        while k >= 0 and not self.speaking(k):
            k -= 1
        return (k + 1) * self.num_frames_required() / self.sample_rate


def covers(intervals, t):
    return any(s <= t < (e if e is not None else float("inf")) for s, e in intervals)


async def run_clip(clip, data, turn):
    vad = InstrumentedSilero(sample_rate=SR, params=VADParams(stop_secs=0.2))
    vad.set_sample_rate(SR)
    turn.clear()
    turn.update_vad_start_secs(0.0)
    pcm = audioop.ulaw2lin(data, 2)
    n = len(data) // CHUNK
    out = {"id": clip["id"], "engine": "pipecat", "vad": [], "vad_decided": [], "turn_ends": [],
           "turn_end_by": [], "barge_ins": [], "inferences": []}
    st = {"vad_state": VADState.QUIET, "user_turn": False, "user_speaking": False,
          "vad_user_speaking": False, "turn_complete": False, "last_event": 0.0}
    vad_cpu = 0.0

    def trigger_stop(t, by):
        # UserTurnController._trigger_user_turn_stop
        if not st["user_turn"] or st["user_speaking"]:
            return
        st["user_turn"] = False
        st["last_event"] = t
        st["turn_complete"] = False  # stop strategy _reset()
        turn.clear()  # TurnAnalyzerUserTurnStopStrategy.handle_user_turn_stopped
        out["turn_ends"].append(r3(t))
        out["turn_end_by"].append(by)

    async def analyze(t):
        c0, w0 = time.process_time(), time.perf_counter()
        state, metrics = await turn.analyze_end_of_turn()
        cpu, wall = (time.process_time() - c0) * 1000, (time.perf_counter() - w0) * 1000
        if metrics is not None:
            out["inferences"].append({"at": r3(t), "prob": round(metrics.probability, 4),
                                      "complete": bool(metrics.is_complete), "cpu_ms": round(cpu, 3),
                                      "wall_ms": round(wall, 3)})
        return state, (wall if metrics is not None else 0.0)

    for i in range(n):
        t = (i + 1) * CHUNK / SR
        CLOCK.now = STREAM_EPOCH + t
        chunk = pcm[i * CHUNK * 2:(i + 1) * CHUNK * 2]
        # 1. VADController._handle_vad
        c0 = time.process_time()
        new = await vad.analyze_audio(chunk)
        vad_cpu += time.process_time() - c0
        event = None
        if new != st["vad_state"] and new not in (VADState.STARTING, VADState.STOPPING):
            event = "start" if new == VADState.SPEAKING else "stop"
            st["vad_state"] = new
        # 2. the audio frame reaches the stop strategy before the queued VAD frame
        if turn.append_audio(chunk, st["vad_user_speaking"]) == EndOfTurnState.COMPLETE:
            await analyze(t)  # buffer already cleared by append_audio: no inference
            st["turn_complete"] = True
            trigger_stop(t, "silence")
        # 3. the queued VAD frame
        if event == "start":
            out["vad"].append([r3(vad.onset_estimate()), None])
            out["vad_decided"].append([r3(t), None])
            st["user_speaking"] = True
            st["last_event"] = t
            if not st["user_turn"]:  # VADUserTurnStartStrategy -> _trigger_user_turn_start
                st["user_turn"] = True
                st["turn_complete"] = False
                if covers(clip["bot_speaking"], t):  # InterruptionFrame while the bot talks
                    out["barge_ins"].append(r3(t))
            turn.update_vad_start_secs(vad.params.start_secs)
            st["vad_user_speaking"] = True
            st["turn_complete"] = False  # _discard_pending_end_of_turn
        elif event == "stop":
            if out["vad"] and out["vad"][-1][1] is None:
                out["vad"][-1][1] = r3(vad.offset_estimate())
                out["vad_decided"][-1][1] = r3(t)
            st["user_speaking"] = False
            st["last_event"] = t
            st["vad_user_speaking"] = False
            state, wall = await analyze(t)
            st["turn_complete"] = state == EndOfTurnState.COMPLETE
            if st["turn_complete"]:
                # The decision exists once the inference has returned (on a call Pipecat
                # awaits it in an executor): stamp it stop + inference time, as Voxline does.
                trigger_stop(t + wall / 1000, "model")
        # UserTurnController._user_turn_stop_timeout_task_handler
        if t - st["last_event"] >= USER_TURN_STOP_TIMEOUT:
            st["last_event"] = t
            if st["user_turn"] and not st["user_speaking"]:
                trigger_stop(t, "watchdog")
    await vad.cleanup()
    return out, vad_cpu, n * CHUNK / SR


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    manifest = w6score.load_manifest(a.corpus)
    if a.only:
        keep = set(a.only.split(","))
        manifest = [c for c in manifest if c["id"] in keep]
    if a.limit:
        manifest = manifest[:a.limit]
    turn = LocalSmartTurnAnalyzerV3()  # defaults: SmartTurnParams(stop_secs=3, pre_speech_ms=500, max 8 s)
    turn.set_sample_rate(SR)
    turn._predict_endpoint(np.zeros(SR * 2, dtype=np.float32))  # warm-up, not recorded
    results = {}
    vad_cpu = audio_s = 0.0
    c0, w0 = time.process_time(), time.perf_counter()
    for clip in manifest:
        with open(os.path.join(a.corpus, clip["file"]), "rb") as f:
            data = f.read()
        row, vc, secs = await run_clip(clip, data, turn)
        vad_cpu += vc
        audio_s += secs
        results[clip["id"]] = row
        emit(row)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    summary = {"workload": "w6", "engine": "pipecat", "pipecat": "1.14.0", "clips": len(results),
               "audio_s": round(audio_s, 2), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
               "vad_cpu_ms_per_audio_s": round(vad_cpu * 1000 / audio_s, 3) if audio_s else None}
    summary.update({k: (round(v, 4) if isinstance(v, float) else v)
                    for k, v in w6score.score(manifest, results).items()})
    emit(summary)


if __name__ == "__main__":
    asyncio.run(main())
