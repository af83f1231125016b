#!/usr/bin/env python3
"""W6 turn-taking corpus: labelled phone-call turns, 8 kHz mu-law, made with espeak-ng + sox.

    python3 benches/w6/make_corpus.py OUT_DIR [--seed 6] [--count N] [--force]
    python3 benches/w6/make_corpus.py --check OUT_DIR      (sanity checks on a made corpus)

Writes OUT_DIR/<id>.ulaw (raw headerless 8 kHz mono G.711 mu-law), OUT_DIR/manifest.jsonl (one
JSON object per clip, see benches/w6/README.md) and OUT_DIR/corpus.json (generator version, seed,
counts). Deterministic from the seed (Python's random.Random; espeak-ng and sox are deterministic;
sox runs with -D, no dither). Skips all work if corpus.json already names the same generator
version, seed and count.

How a clip is made:
  1. each spoken piece: `espeak-ng -v VOICE -s WPM --stdout TEXT | sox - -r 8000 ... sinc 300-3400`
     (telephone band), then trimmed to its speech extent: 5 ms frames whose RMS is above -40 dB of
     the piece's loudest frame; internal runs of >= 200 ms below that threshold split the piece
     into several speech intervals. The trimmed piece is scaled to the clip's speech level
     (active-speech RMS of -28..-21 dBFS).
  2. pieces, silences and tones (synthesised here at 8 kHz) are laid on a timeline; the speech
     intervals, pauses, tones and the turn end are exact from this construction.
  3. noise (pink, brown or a mix, generated here from the seed, band-limited by the same sox sinc)
     is scaled to the clip's SNR: 20*log10(speech RMS / noise RMS), speech RMS taken over the
     speech intervals of the clean signal (tone-only clips: the clip's nominal speech level).
  4. clean + noise -> sox -> raw mu-law.
Only the python3 standard library is used.
"""

import argparse
import array
import json
import math
import os
import random
import subprocess
import sys

GENERATOR_VERSION = 2
SR = 8000
BAND = ["sinc", "300-3400"]
FRAME = 40  # 5 ms trimming frames
TRIM_DB = -40.0
SPLIT_GAP_S = 0.2

VOICES = ["en-us", "en-gb"]
VARIANTS = ["", "+m1", "+m2", "+m3", "+f1", "+f2", "+f3"]

COMPLETE = [
    "yes that's right",
    "no thank you",
    "that works for me",
    "I want to cancel my subscription",
    "what time do you close today?",
    "can I speak to a manager please?",
    "my name is Sarah Johnson",
    "I'd like to book a table for four people tomorrow night",
    "is the store on Main Street open on Sundays?",
    "I never received the refund you promised me last month",
    "could you send me the invoice by email?",
    "thanks, that's everything I needed",
    "I ordered a pair of running shoes last week and they still haven't arrived",
    "how much does the premium plan cost per month?",
    "please change my delivery address to forty two Oak Avenue",
    "do you have any appointments available on Friday afternoon?",
    "the internet in my apartment has been down since this morning",
    "I'd like to pay my bill with a credit card",
    "sure, go ahead",
    "can you repeat the confirmation number?",
    "I think you charged me twice for the same order",
    "where can I park when I arrive at the hotel?",
    "I need a taxi to the airport at six in the morning",
    "that's fine, thank you very much for your help",
    "what is the balance on my account?",
    "I lost my card and I need to block it right away",
    "we are a family of three and we would like a room with a view of the sea",
    "is there a fee for changing the flight date?",
    "okay, I'll wait for the technician then",
    "can I return an item without the receipt?",
    "my package was delivered to the wrong address",
    "how long will the repair take?",
    "I would like to upgrade my phone to the newest model",
    "no, that's not my date of birth",
    "please cancel the appointment I made for Thursday",
    "do you deliver to the suburbs as well?",
    "the heating in my room is not working",
    "I'm calling to confirm my reservation for Saturday",
    "what documents do I need to bring with me?",
    "great, see you then",
]

# (first part, continuation[, second continuation]): the first part clearly continues.
PAUSE = [
    ("my order number is", "one two three four five"),
    ("I'd like to check on", "the order I placed", "on Tuesday afternoon"),
    ("my phone number is", "five five five", "two one two three"),
    ("I was calling about", "the bill", "for last month"),
    ("the reason I'm calling is", "my card was declined yesterday"),
    ("my account number is", "four seven", "two nine eight one"),
    ("I need to change", "the date of my flight", "to Boston"),
    ("could you tell me", "when the package will arrive?"),
    ("the address is", "twenty one Baker Street", "apartment six"),
    ("I want to book", "a double room", "for two nights"),
    ("my date of birth is", "the fourth of March", "nineteen eighty two"),
    ("I'm looking for", "a pair of", "black leather boots"),
    ("can you send the technician", "on Monday morning?"),
    ("the problem started when", "I updated the app", "on my phone"),
    ("I would like to speak with", "someone in the billing department"),
    ("my email address is", "john dot smith", "at example dot com"),
    ("we need a table for", "six people", "at eight o'clock"),
    ("the last four digits are", "nine three one seven"),
    ("I think the issue is", "with the router", "in the living room"),
    ("I'm calling on behalf of", "my mother who is in the hospital"),
    ("the flight number is", "BA two eight five"),
    ("what I really need is", "a refund for", "the broken heater"),
    ("my postcode is", "SW one", "four AB"),
    ("I ordered", "three boxes of printer paper", "and two ink cartridges"),
    ("the confirmation code is", "X Y Z", "seven seven four"),
]
FILLERS = ["uh", "um"]

TRAILING = [
    "that's all", "I think that's it", "no that's fine", "okay so that's the problem",
    "yeah that should be everything", "I guess that's what I wanted to ask",
    "that's the address", "so yeah", "and that's my number", "well that's about it",
]

BACKCHANNEL = [("mm-hmm", "[[m,m'hm]]"), ("yeah", "yeah"), ("okay", "okay"), ("right", "right"),
               ("uh-huh", "uh-huh"), ("sure", "sure"), ("hmm", "hmm"), ("I see", "I see")]

DTMF = {"1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
        "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
        "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
        "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633)}

TONE_SENTENCES = [
    "hi, I'm returning a call from this number",
    "hello, is anyone there?",
    "yes, I'm still here",
    "sorry about that, I'm back",
    "I entered my account number",
    "did that go through?",
    "hello, I was on hold for a long time",
    "okay, I pressed one",
]


def db(x):
    return 10 ** (x / 20.0)


def rms(xs):
    return math.sqrt(sum(v * v for v in xs) / len(xs)) if xs else 0.0


# --------------------------------------------------------------------------------------------
# Speech pieces


_piece_cache = {}


def tts(text, voice, wpm):
    """Band-limited 8 kHz TTS of `text` as a list of floats (full scale 1.0), untrimmed."""
    key = (text, voice, wpm)
    if key in _piece_cache:
        return _piece_cache[key]
    esp = subprocess.Popen(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = subprocess.run(["sox", "-D", "-t", "wav", "-", "-t", "raw", "-r", str(SR), "-e", "signed",
                          "-b", "16", "-c", "1", "-", *BAND],
                         stdin=esp.stdout, capture_output=True, check=True).stdout
    esp.stdout.close()
    if esp.wait() != 0:
        raise RuntimeError(f"espeak-ng failed on {text!r}")
    a = array.array("h")
    a.frombytes(out)
    if sys.byteorder != "little":
        a.byteswap()
    samples = [v / 32768.0 for v in a]
    _piece_cache[key] = samples
    return samples


def trim(samples):
    """(trimmed samples, [[s, e], ...] speech intervals relative to the trimmed start, in samples)."""
    n = len(samples) // FRAME
    fr = [rms(samples[i * FRAME:(i + 1) * FRAME]) for i in range(n)]
    peak = max(fr) if fr else 0.0
    if peak <= 0:
        raise RuntimeError("silent TTS piece")
    thr = peak * db(TRIM_DB)
    on = [v >= thr for v in fr]
    runs = []  # voiced runs of frames [i, j), merged across gaps shorter than SPLIT_GAP_S
    i = 0
    while i < n:
        if not on[i]:
            i += 1
            continue
        j = i
        while j < n and on[j]:
            j += 1
        if runs and (i - runs[-1][1]) * FRAME < SPLIT_GAP_S * SR:
            runs[-1][1] = j
        else:
            runs.append([i, j])
        i = j
    first, last = runs[0][0], runs[-1][1] - 1
    intervals = [[a * FRAME, b * FRAME] for a, b in runs]
    base = first * FRAME
    piece = samples[base:(last + 1) * FRAME]
    return piece, [[s - base, e - base] for s, e in intervals]


# --------------------------------------------------------------------------------------------
# Tones (8 kHz, peak-normalised shapes; the caller scales them)


def sines(freqs, dur, phase_t0=0.0, ramp=0.005):
    n = int(round(dur * SR))
    r = max(1, int(ramp * SR))
    out = []
    for i in range(n):
        t = phase_t0 + i / SR
        v = sum(math.sin(2 * math.pi * f * t) for f in freqs) / len(freqs)
        g = min(1.0, i / r, (n - 1 - i) / r) if n > 2 * r else 1.0
        out.append(v * g)
    return out


def cadence(freqs, on, off, total):
    out = []
    while len(out) < int(round(total * SR)):
        out += sines(freqs, on)
        out += [0.0] * int(round(off * SR))
    return out[:int(round(total * SR))]


def tone_intervals(shape, t0, kind, thr=1e-4):
    """Non-silent runs of a synthesised tone shape (gaps >= 30 ms split), as [s, e, kind]."""
    res = []
    on = None
    quiet = 0
    for i, v in enumerate(shape):
        if abs(v) > thr:
            if on is None:
                on = i
            quiet = 0
            last = i
        elif on is not None:
            quiet += 1
            if quiet >= 0.03 * SR:
                res.append([round(t0 + on / SR, 3), round(t0 + (last + 1) / SR, 3), kind])
                on = None
    if on is not None:
        res.append([round(t0 + on / SR, 3), round(t0 + (last + 1) / SR, 3), kind])
    return res


def music(rng, dur):
    """Simple 'hold music': an arpeggio over a few triads, soft attack/decay per note."""
    roots = [220.0, 174.6, 196.0, 261.6, 246.9]
    prog = [rng.choice(roots) for _ in range(4)]
    note = rng.choice([0.18, 0.22, 0.25])
    out = []
    k = 0
    while len(out) < int(round(dur * SR)):
        root = prog[(k // 8) % len(prog)]
        ratio = [1.0, 1.26, 1.5, 2.0][k % 4]
        f = root * ratio
        n = int(note * SR)
        for i in range(n):
            t = i / SR
            env = min(1.0, t / 0.01) * math.exp(-3.0 * t / note)
            pad = 0.3 * (math.sin(2 * math.pi * root * (len(out) + i) / SR)
                         + math.sin(2 * math.pi * root * 1.5 * (len(out) + i) / SR))
            out.append(0.6 * env * math.sin(2 * math.pi * f * t) + pad * 0.5)
        k += 1
    out = out[:int(round(dur * SR))]
    r = int(0.02 * SR)
    for i in range(min(r, len(out))):
        out[i] *= i / r
        out[-1 - i] *= i / r
    return out


def clicks(rng, dur, count):
    out = [0.0] * int(round(dur * SR))
    pos = sorted(rng.uniform(0.05, dur - 0.05) for _ in range(count))
    for p in pos:
        i0 = int(p * SR)
        for j in range(int(0.004 * SR)):
            if i0 + j < len(out):
                out[i0 + j] += (1.0 if j == 0 else -0.6) * math.exp(-j / 6.0) * rng.choice([1, -1])
    return out


def dtmf(rng, digits):
    out = []
    for d in digits:
        out += sines(DTMF[d], 0.1, ramp=0.003)
        out += [0.0] * int(rng.uniform(0.08, 0.15) * SR)
    return out[:-1] if out else out


# --------------------------------------------------------------------------------------------
# Noise


def noise(rng, n, kind):
    """Pink (Paul Kellet's filter), brown (leaky integrator) or a mix; not normalised."""
    out = [0.0] * n
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = 0.0
    br = 0.0
    g = rng.gauss
    for i in range(n):
        w = g(0.0, 1.0)
        p = 0.0
        if kind in ("pink", "mix"):
            b0 = 0.99886 * b0 + w * 0.0555179
            b1 = 0.99332 * b1 + w * 0.0750759
            b2 = 0.96900 * b2 + w * 0.1538520
            b3 = 0.86650 * b3 + w * 0.3104856
            b4 = 0.55000 * b4 + w * 0.5329522
            b5 = -0.7616 * b5 - w * 0.0168980
            p = (b0 + b1 + b2 + b3 + b4 + b5 + b6 + w * 0.5362) * 0.11
            b6 = w * 0.115926
        if kind in ("brown", "mix"):
            br = 0.995 * br + 0.1 * w
            p += br * (0.5 if kind == "mix" else 1.0)
        out[i] = p
    return out


def sox_filter(samples, peak):
    """Band-limit float samples through sox's telephone band filter (scaled to `peak` first)."""
    a = array.array("h", [max(-32767, min(32767, int(round(v / peak * 16000)))) for v in samples])
    if sys.byteorder != "little":
        a.byteswap()
    raw = subprocess.run(["sox", "-D", "-t", "raw", "-r", str(SR), "-e", "signed", "-b", "16", "-c", "1",
                          "-", "-t", "raw", "-r", str(SR), "-e", "signed", "-b", "16", "-c", "1", "-", *BAND],
                         input=a.tobytes(), capture_output=True, check=True).stdout
    b = array.array("h")
    b.frombytes(raw)
    if sys.byteorder != "little":
        b.byteswap()
    return [v / 16000.0 * peak for v in b][:len(samples)] + [0.0] * max(0, len(samples) - len(b))


def write_ulaw(path, samples):
    a = array.array("h", [max(-32767, min(32767, int(round(v * 32768)))) for v in samples])
    if sys.byteorder != "little":
        a.byteswap()
    subprocess.run(["sox", "-D", "-t", "raw", "-r", str(SR), "-e", "signed", "-b", "16", "-c", "1", "-",
                    "-t", "raw", "-r", str(SR), "-e", "mu-law", "-b", "8", "-c", "1", path],
                   input=a.tobytes(), check=True)


# --------------------------------------------------------------------------------------------
# Clip construction


class Clip:
    def __init__(self, rng, cid, category):
        self.rng = rng
        self.id = cid
        self.category = category
        self.voice = rng.choice(VOICES) + rng.choice(VARIANTS)
        self.wpm = rng.randrange(150, 191, 5)
        self.level = db(rng.uniform(-28.0, -21.0))  # active-speech RMS
        self.snr = round(rng.uniform(10.0, 30.0), 1)
        self.noise_kind = rng.choice(["pink", "brown", "mix"])
        self.t = round(rng.uniform(0.4, 1.0), 3)  # cursor, seconds
        self.parts = []  # (start_sample, samples)
        self.speech = []
        self.pauses = []
        self.tones = []
        self.bot = []
        self.text = []

    def say(self, text, spoken=None):
        piece, ivs = trim(tts(spoken or text, self.voice, self.wpm))
        g = self.level / (rms([v for s, e in ivs for v in piece[s:e]]) or 1.0)
        s0 = int(round(self.t * SR))
        self.parts.append((s0, [v * g for v in piece]))
        for s, e in ivs:
            self.speech.append([round((s0 + s) / SR, 3), round((s0 + e) / SR, 3)])
        self.text.append(text)
        self.t = (s0 + len(piece)) / SR
        return self

    def gap(self, dur, pause=False, label=None):
        if pause:
            self.pauses.append([round(self.t, 3), round(self.t + dur, 3)])
        if label:
            self.text.append(label)
        self.t += dur
        return self

    def tone(self, shape, kind, rel_db, text=None):
        pk = max((abs(v) for v in shape), default=0.0) or 1.0
        r = rms([v for v in shape if v != 0.0]) or pk
        g = self.level * db(rel_db) / r
        s0 = int(round(self.t * SR))
        self.parts.append((s0, [v * g for v in shape]))
        self.tones += tone_intervals(shape, s0 / SR, kind)
        self.text.append(text or f"<{kind}>")
        self.t = (s0 + len(shape)) / SR
        return self

    def render(self, out_dir, turn_end):
        tail = self.rng.uniform(3.6, 4.2)
        dur = math.ceil((self.t + tail) * 50) / 50.0  # whole 20 ms frames
        n = int(round(dur * SR))
        clean = [0.0] * n
        for s0, xs in self.parts:
            for i, v in enumerate(xs):
                if s0 + i < n:
                    clean[s0 + i] += v
        nz = noise(self.rng, n + 400, self.noise_kind)[400:]
        nz = sox_filter(nz, max(abs(v) for v in nz) or 1.0)
        ref = [clean[i] for s, e in self.speech for i in range(int(round(s * SR)), int(round(e * SR)))]
        sp = rms(ref) if ref else self.level
        g = sp / db(self.snr) / (rms(nz) or 1.0)
        mix = [c + v * g for c, v in zip(clean, nz)]
        write_ulaw(os.path.join(out_dir, f"{self.id}.ulaw"), mix)
        return {
            "id": self.id, "file": f"{self.id}.ulaw", "category": self.category,
            "voice": self.voice, "wpm": self.wpm, "snr_db": self.snr, "noise": self.noise_kind,
            "speech_dbfs": round(20 * math.log10(sp), 1), "duration_s": round(dur, 3),
            "text": " ".join(self.text).replace(" ...", " ..."),
            "speech": self.speech,
            "turn_end": turn_end,
            "pauses": self.pauses,
            "bot_speaking": self.bot,
            "tones": self.tones,
        }


def make_complete(c):
    rng = c.rng
    c.say(rng.choice(COMPLETE))
    return c.speech[-1][1]


def make_pause(c):
    rng = c.rng
    parts = rng.choice(PAUSE)
    n_pauses = 1 if len(parts) == 2 else rng.choice([1, 2, 2, 2])
    if len(parts) == 3 and n_pauses == 1:
        parts = (parts[0], parts[1] + " " + parts[2])
    c.say(parts[0])
    for nxt in parts[1:]:
        mode = rng.choice(["none", "before", "after", "both"])
        if mode in ("before", "both"):
            c.gap(rng.uniform(0.08, 0.2)).say(rng.choice(FILLERS))
        c.gap(rng.uniform(0.3, 1.5), pause=True, label="...")
        if mode in ("after", "both"):
            c.say(rng.choice(FILLERS)).gap(rng.uniform(0.08, 0.2))
        c.say(nxt)
    return c.speech[-1][1]


def make_filler(c, i):
    rng = c.rng
    if i % 2 == 0:
        c.say(rng.choice(TRAILING))
    else:
        parts = rng.choice(PAUSE)
        c.say(parts[0]).gap(rng.uniform(0.08, 0.2)).say(rng.choice(FILLERS))
        c.gap(rng.uniform(0.3, 1.5), pause=True, label="...")
        c.say(" ".join(parts[1:]))
    c.gap(rng.uniform(0.1, 0.35)).say(rng.choice(FILLERS))
    return c.speech[-1][1]


def make_backchannel(c):
    rng = c.rng
    k = rng.choice([1, 1, 2])
    for j in range(k):
        text, spoken = rng.choice(BACKCHANNEL)
        if j:
            c.gap(rng.uniform(1.5, 3.0), label="...")
        c.say(text, spoken)
    return None  # a backchannel is not a turn


def make_tone(c, i):
    """Tones before a sentence, between two sentences, or alone; every third one with the bot
    talking over the tone part (caller silent)."""
    rng = c.rng
    kind = ["ringback", "busy", "dtmf", "click", "music"][i % 5]
    layout = ["before", "between", "alone", "before", "between", "before"][(i // 5) % 6]
    bot = i % 3 == 0 and layout != "between"

    def tone():
        if kind == "ringback":
            total = 2.0 + rng.uniform(0.5, 2.0)  # 2 s on, (part of) 4 s off, then pick-up
            c.tone(cadence([440, 480], 2.0, 4.0, total), kind, rng.uniform(-6, 0))
        elif kind == "busy":
            c.tone(cadence([480, 620], 0.5, 0.5, rng.choice([2.5, 3.5, 4.5])), kind, rng.uniform(-6, 0))
        elif kind == "dtmf":
            digits = "".join(rng.choice("0123456789*#") for _ in range(rng.randint(3, 8)))
            c.tone(dtmf(rng, digits), kind, rng.uniform(-3, 3), text=f"<dtmf {digits}>")
        elif kind == "click":
            d = rng.uniform(1.0, 2.5)
            c.tone(clicks(rng, d, rng.randint(2, 5)), kind, rng.uniform(0, 8))
        else:
            c.tone(music(rng, rng.uniform(2.0, 4.5)), kind, rng.uniform(-8, 0))

    if layout == "between":
        c.say(rng.choice(TONE_SENTENCES)).gap(rng.uniform(0.3, 0.8))
        tone()
        c.gap(rng.uniform(0.3, 0.8)).say(rng.choice(TONE_SENTENCES))
        return c.speech[-1][1]
    tone()
    if bot:
        c.bot.append([0.0, round(c.t + 0.1, 3)])
    if layout == "alone":
        return None
    c.gap(rng.uniform(0.4, 1.0)).say(rng.choice(TONE_SENTENCES))
    return c.speech[-1][1]


def plan(count):
    """Category of each clip, in order: ~36% complete, 32% pause, 9% filler, 14% bc, 14% tone."""
    shares = [("complete", 80), ("pause", 70), ("filler", 20), ("backchannel", 30), ("tone", 30)]
    total = sum(n for _, n in shares)
    out = []
    for cat, n in shares:
        out += [cat] * max(1, round(n * count / total))
    return out


def build(out_dir, seed, count):
    os.makedirs(out_dir, exist_ok=True)
    stamp = {"generator_version": GENERATOR_VERSION, "seed": seed, "count": count}
    cj = os.path.join(out_dir, "corpus.json")
    if os.path.exists(cj) and os.path.exists(os.path.join(out_dir, "manifest.jsonl")):
        try:
            old = json.load(open(cj))
            if all(old.get(k) == v for k, v in stamp.items()):
                print(f"corpus up to date in {out_dir}", file=sys.stderr)
                return
        except (OSError, ValueError):
            pass
    cats = plan(count)
    idx = {}
    rows = []
    for n, cat in enumerate(cats):
        i = idx.get(cat, 0)
        idx[cat] = i + 1
        rng = random.Random(f"w6/{seed}/{cat}/{i}")
        c = Clip(rng, f"{cat}-{i:03d}", cat)
        if cat == "complete":
            te = make_complete(c)
        elif cat == "pause":
            te = make_pause(c)
        elif cat == "filler":
            te = make_filler(c, i)
        elif cat == "backchannel":
            te = make_backchannel(c)
        else:
            te = make_tone(c, i)
        row = c.render(out_dir, te)
        if cat == "backchannel":
            row["bot_speaking"] = [[0.0, row["duration_s"]]]  # the whole clip
        rows.append(row)
        if (n + 1) % 20 == 0:
            print(f"  {n + 1}/{len(cats)} clips", file=sys.stderr)
    with open(os.path.join(out_dir, "manifest.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    stamp["clips"] = len(rows)
    stamp["categories"] = {k: v for k, v in idx.items()}
    stamp["audio_s"] = round(sum(r["duration_s"] for r in rows), 1)
    with open(cj, "w") as f:
        json.dump(stamp, f, indent=1)
    print(f"wrote {len(rows)} clips ({stamp['audio_s']} s) to {out_dir}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Sanity checks on the finished mu-law files


def ulaw_decode(b):
    b = ~b & 0xFF
    sign, exp, man = b & 0x80, (b >> 4) & 7, b & 0x0F
    v = (((man << 3) + 0x84) << exp) - 0x84
    return -v if sign else v


ULAW = [ulaw_decode(i) / 32768.0 for i in range(256)]


def check(out_dir):
    """Per clip: file length = duration; SNR estimated from the mu-law (power in speech intervals
    vs power where nothing is labelled) close to the label; energy onsets/offsets of the mu-law
    (20 ms frames, 10 dB over the noise floor) near the labelled speech, on clips with SNR >= 20."""
    rows = [json.loads(x) for x in open(os.path.join(out_dir, "manifest.jsonl"))]
    bad = 0
    snr_err = []
    edge_err = []
    stray = []
    for r in rows:
        data = open(os.path.join(out_dir, r["file"]), "rb").read()
        x = [ULAW[b] for b in data]
        if abs(len(x) / SR - r["duration_s"]) > 0.001:
            print(f"{r['id']}: length {len(x) / SR} != {r['duration_s']}")
            bad += 1
        busy = [False] * len(x)
        for iv in r["speech"] + [t[:2] for t in r["tones"]]:
            for i in range(max(0, int(iv[0] * SR) - 400), min(len(x), int(iv[1] * SR) + 400)):
                busy[i] = True
        quiet = [x[i] for i in range(len(x)) if not busy[i]]
        pn = rms(quiet) ** 2
        if r["speech"]:
            sp = [x[i] for s, e in r["speech"] for i in range(int(s * SR), int(e * SR))]
            ps = rms(sp) ** 2
            est = 10 * math.log10(max(ps - pn, 1e-12) / pn)
            snr_err.append(est - r["snr_db"])
            if abs(est - r["snr_db"]) > 1.5:
                print(f"{r['id']}: SNR estimated {est:.1f} dB, labelled {r['snr_db']}")
                bad += 1
            if r["snr_db"] >= 20 and not r["tones"]:
                thr = math.sqrt(pn) * db(10)
                fr = [rms(x[i:i + 160]) for i in range(0, len(x) - 159, 160)]
                act = [i for i, v in enumerate(fr) if v > thr]
                if act:
                    on, off = act[0] * 0.02, (act[-1] + 1) * 0.02
                    e1, e2 = on - r["speech"][0][0], off - r["speech"][-1][1]
                    edge_err += [e1, e2]
                    if abs(e1) > 0.25 or abs(e2) > 0.25:
                        print(f"{r['id']}: energy edges {on:.2f}-{off:.2f} vs labelled "
                              f"{r['speech'][0][0]:.2f}-{r['speech'][-1][1]:.2f}")
                        bad += 1
        # loud frames (15 dB over the noise floor) must lie in labelled speech/tones (+-40 ms)
        thr = math.sqrt(pn) * db(15)
        for k in range(0, len(x) // 160):
            if rms(x[k * 160:(k + 1) * 160]) > thr:
                t0, t1 = k * 0.02, (k + 1) * 0.02
                if not any(iv[0] - 0.04 <= t1 and t0 <= iv[1] + 0.04 for iv in r["speech"] + r["tones"]):
                    stray.append((r["id"], round(t0, 2)))
        if r["turn_end"] is not None and r["duration_s"] - r["turn_end"] < 2.5:
            print(f"{r['id']}: trailing {r['duration_s'] - r['turn_end']:.2f} s < 2.5 s")
            bad += 1
    cats = {}
    for r in rows:
        cats[r["category"]] = cats.get(r["category"], 0) + 1
    pauses = [p[1] - p[0] for r in rows for p in r["pauses"]]
    print(f"{len(rows)} clips {cats}; {sum(r['duration_s'] for r in rows):.0f} s of audio")
    print(f"pauses: {len(pauses)}, {sum(1 for p in pauses if p <= 1.0)} <= 1.0 s, "
          f"min {min(pauses):.2f} max {max(pauses):.2f}")
    print(f"voices: {len({r['voice'] for r in rows})}; SNR {min(r['snr_db'] for r in rows)}.."
          f"{max(r['snr_db'] for r in rows)} dB")
    if snr_err:
        snr_err.sort()
        print(f"SNR estimate - label: median {snr_err[len(snr_err) // 2]:+.2f} dB, "
              f"range {snr_err[0]:+.2f}..{snr_err[-1]:+.2f}")
    if edge_err:
        ae = sorted(abs(e) for e in edge_err)
        print(f"energy edge vs label (SNR >= 20, {len(ae)} edges): median {ae[len(ae) // 2] * 1000:.0f} ms, "
              f"max {ae[-1] * 1000:.0f} ms (20 ms frames)")
    print(f"loud 20 ms frames outside labelled speech/tones: {len(stray)} {stray[:10]}")
    bad += len(stray)
    print("OK" if not bad else f"{bad} problems")
    return 0 if not bad else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--count", type=int, default=230)
    ap.add_argument("--check", action="store_true", help="only run sanity checks on OUT_DIR")
    a = ap.parse_args()
    if a.check:
        sys.exit(check(a.out_dir))
    build(a.out_dir, a.seed, a.count)


if __name__ == "__main__":
    main()
