//! VAD on real (synthetic) speech: espeak-ng sentences with known pauses, at 16 kHz PCM and at
//! 8 kHz μ-law, clean and with white noise at 20 dB and 5 dB SNR, plus a tonal distractor; and
//! barge-in through the harness; telephone tones, DTMF, clicks and hold music made with sox, alone
//! and next to sentences. Skipped with a message when espeak-ng or sox is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{AudioFormat, AudioFrame, Event, Frame, Pipeline, PipelineParams, StartInfo};
use voxline_processors::audio::turn::{TurnAnswer, TurnDetector, TurnError, TurnModel, TurnParams};
use voxline_processors::audio::{Resampler, StreamResampler, VadParams, VadProcessor, VadTransition};
use voxline_processors::codec::{MulawDecoder, g711};

const SENTENCES: [&str; 3] = [
    "Hello, I would like to check the status of my order please.",
    "The number is four seven two nine one.",
    "Thank you so much for your help today.",
];
const PAUSES: [f64; 3] = [1.0, 1.3, 0.9]; // silence before each sentence
const TAIL: f64 = 1.2;

fn espeak(text: &str) -> Option<Vec<i16>> {
    espeak_voice(text, "en-us")
}

fn espeak_voice(text: &str, voice: &str) -> Option<Vec<i16>> {
    let dir = std::env::temp_dir().join(format!("voxline_vad_{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    // One file per synthesis: the tests of this file run concurrently in one process, and two
    // of them writing the same path would read back each other's half-written audio.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("s{n}.wav"));
    let st = std::process::Command::new("espeak-ng").args(["-v", voice, "-w"]).arg(&path).arg(text).status().ok()?;
    if !st.success() {
        return None;
    }
    let mut r = hound::WavReader::open(&path).ok()?;
    let rate = r.spec().sample_rate;
    let raw: Vec<i16> = r.samples::<i16>().filter_map(Result::ok).collect();
    // espeak speaks at 22.05 kHz: bring it to 16 kHz with the resampler under test's sibling.
    let mut rs = StreamResampler::new(rate, 16000).ok()?;
    let mut out = Vec::new();
    let pad = vec![0i16; rate as usize / 50];
    rs.push(raw.iter().copied().chain(pad), |c| {
        out.extend(c.iter().map(|&x| (x * 32768.0).clamp(-32768.0, 32767.0) as i16))
    })
    .ok()?;
    Some(out[rs.delay_samples()..].to_vec())
}

/// Speech extent of a clip: first/last 10 ms window at or above −45 dBFS RMS (as bench/make_audio.sh).
fn extent(x: &[i16]) -> (usize, usize) {
    let win = 160;
    let thr = (32768.0f64 * 10f64.powf(-45.0 / 20.0)).powi(2) * win as f64;
    let loud: Vec<usize> = (0..x.len().saturating_sub(win))
        .step_by(16)
        .filter(|&i| x[i..i + win].iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() >= thr)
        .collect();
    (loud[0], loud[loud.len() - 1] + win)
}

struct Call {
    pcm: Vec<i16>,
    truth: Vec<(f64, f64)>,
}

fn build_call() -> Option<Call> {
    build_call_voice("en-us")
}

fn build_call_voice(voice: &str) -> Option<Call> {
    let mut pcm = Vec::new();
    let mut truth = Vec::new();
    for (s, pause) in SENTENCES.iter().zip(PAUSES) {
        pcm.extend(std::iter::repeat_n(0i16, (pause * 16000.0) as usize));
        let clip = espeak_voice(s, voice)?;
        let (a, b) = extent(&clip);
        let base = pcm.len();
        truth.push(((base + a) as f64 / 16000.0, (base + b) as f64 / 16000.0));
        pcm.extend(clip);
    }
    pcm.extend(std::iter::repeat_n(0i16, (TAIL * 16000.0) as usize));
    Some(Call { pcm, truth })
}

/// Deterministic white noise (xorshift), scaled to `snr_db` below the speech RMS.
fn add_noise(call: &Call, snr_db: f64) -> Vec<i16> {
    let speech: Vec<f64> = call
        .truth
        .iter()
        .flat_map(|&(a, b)| call.pcm[(a * 16000.0) as usize..(b * 16000.0) as usize].iter().map(|&v| f64::from(v)))
        .collect();
    let rms = (speech.iter().map(|v| v * v).sum::<f64>() / speech.len() as f64).sqrt();
    let noise_rms = rms / 10f64.powf(snr_db / 20.0);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    call.pcm
        .iter()
        .map(|&v| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Uniform in [-1, 1) has RMS 1/sqrt(3).
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (f64::from(v) + u * noise_rms * 3f64.sqrt()).clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// A-major chord (A3, C#4, E4, pure tones) with 3 Hz tremolo: hold music / ringback-like.
///
/// Known limit, measured: the same chord with 2nd and 3rd harmonics at a voice-like 220 Hz
/// fundamental (a hummed or sung note) scores up to 0.81 in earshot and does start a segment.
fn add_chord(call: &Call, rms: f64) -> Vec<i16> {
    // Three equal tones of amplitude A have RMS A·sqrt(3/2); the tremolo averages 0.75.
    let amp = rms * 32768.0 * 3.0 / (1.5f64.sqrt() * 0.75);
    call.pcm
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let t = i as f64 / 16000.0;
            let mut c = 0.0;
            for f in [220.0, 277.18, 329.63] {
                c += (2.0 * std::f64::consts::PI * f * t).sin();
            }
            let trem = 0.75 + 0.25 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            (f64::from(v) + c / 3.0 * amp * trem).clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

fn to_frames(pcm: &[i16], rate: u32, mulaw: bool) -> Vec<Frame> {
    let n = rate as usize / 50;
    pcm.chunks(n)
        .enumerate()
        .map(|(i, c)| {
            let (data, format) = if mulaw {
                (Bytes::from(c.iter().map(|&s| g711::mulaw_encode(s)).collect::<Vec<u8>>()), AudioFormat::mulaw_8k())
            } else {
                (Bytes::from(c.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()), AudioFormat::pcm16(rate))
            };
            let mut a = AudioFrame::new(data, format);
            a.pts = Some(Duration::from_millis(20 * i as u64));
            Frame::InputAudio(a)
        })
        .collect()
}

fn downsample_8k(pcm: &[i16]) -> Vec<i16> {
    let mut rs = StreamResampler::new(16000, 8000).unwrap();
    let mut out = Vec::new();
    rs.push(pcm.iter().copied(), |c| out.extend(c.iter().map(|&x| (x * 32768.0).clamp(-32768.0, 32767.0) as i16)))
        .unwrap();
    out
}

/// Run frames through `pipeline` ending in a VAD; return (onset, offset) estimates of its segments.
async fn segments(frames: Vec<Frame>, eight_k_ulaw: bool) -> Vec<(f64, Option<f64>)> {
    let found = std::sync::Arc::new(std::sync::Mutex::new(Vec::<VadTransition>::new()));
    let sink = found.clone();
    let vad = VadProcessor::new().on_transition(move |t| sink.lock().unwrap().push(*t));
    let pipeline = if eight_k_ulaw {
        // The Twilio front end: μ-law decode, then the VAD upsamples internally.
        Pipeline::new().with(MulawDecoder::new()).with(vad)
    } else {
        Pipeline::new().with(vad)
    };
    let h = Harness::new(pipeline);
    for f in frames {
        h.push(f).await;
    }
    h.finish().await;
    let mut segs: Vec<(f64, Option<f64>)> = Vec::new();
    for t in found.lock().unwrap().iter() {
        if t.speaking {
            segs.push((t.boundary.as_secs_f64(), None));
        } else if let Some(last) = segs.last_mut() {
            last.1 = Some(t.boundary.as_secs_f64());
        }
    }
    segs
}

/// `tol` bounds the start error; ends get 50 ms more, because the model's score decays over its
/// 48 ms analysis context after the last phoneme and a noise floor keeps it up a little longer.
fn check(name: &str, segs: &[(f64, Option<f64>)], truth: &[(f64, f64)], tol: f64) {
    eprintln!("{name}: {segs:?} truth {truth:?}");
    assert_eq!(segs.len(), truth.len(), "{name}: segment count: {segs:?} vs {truth:?}");
    for (i, ((s, e), (a, b))) in segs.iter().zip(truth).enumerate() {
        let e = e.unwrap_or(f64::INFINITY);
        assert!((s - a).abs() <= tol, "{name}: sentence {i} start {s:.3} vs {a:.3}");
        assert!((e - b).abs() <= tol + 0.05, "{name}: sentence {i} end {e:.3} vs {b:.3}");
    }
}

fn espeak_missing() -> bool {
    let ok = std::process::Command::new("espeak-ng").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipping: espeak-ng not on PATH (apt-get install espeak-ng)");
    }
    !ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentences_are_segmented_clean_noisy_and_at_8k_ulaw() {
    if espeak_missing() {
        return;
    }
    let call = build_call().unwrap();
    let tol = 0.15;
    check("16k clean", &segments(to_frames(&call.pcm, 16000, false), false).await, &call.truth, tol);
    let n20 = add_noise(&call, 20.0);
    check("16k 20 dB", &segments(to_frames(&n20, 16000, false), false).await, &call.truth, tol);
    let n5 = add_noise(&call, 5.0);
    check("16k 5 dB", &segments(to_frames(&n5, 16000, false), false).await, &call.truth, 0.25);
    check("8k ulaw clean", &segments(to_frames(&downsample_8k(&call.pcm), 8000, true), true).await, &call.truth, tol);
    check("8k ulaw 20 dB", &segments(to_frames(&downsample_8k(&n20), 8000, true), true).await, &call.truth, tol);
    // Known limit, measured: telephone band + μ-law + 5 dB white noise hides the breathy
    // "Hello," of sentence 1 (its start is found ~0.6 s late, at the next word). Assert what holds:
    // every sentence found once, no false segment, ends within tolerance.
    let s5 = segments(to_frames(&downsample_8k(&n5), 8000, true), true).await;
    assert_eq!(s5.len(), call.truth.len(), "8k ulaw 5 dB: {s5:?}");
    for ((s, e), (a, b)) in s5.iter().zip(&call.truth) {
        let e = e.unwrap_or(f64::INFINITY);
        assert!(*s < *b && e > *a, "8k ulaw 5 dB: {s}..{e} does not overlap {a}..{b}");
        assert!((e - b).abs() <= 0.3, "8k ulaw 5 dB: end {e} vs {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonal_music_is_not_speech() {
    // The level of the reference measurement (rust-ecosystem.md §3.3): RMS 0.045 of full scale.
    const CHORD_RMS: f64 = 0.045;
    if espeak_missing() {
        return;
    }
    let call = build_call().unwrap();
    // Chord alone (speech removed): no segment at all.
    let silent = Call { pcm: vec![0; call.pcm.len()], truth: vec![] };
    let only_chord = add_chord(&silent, CHORD_RMS);
    assert!(segments(to_frames(&only_chord, 16000, false), false).await.is_empty());
    // Chord under speech (about 6 dB below it): exactly the sentences.
    let mixed = add_chord(&call, CHORD_RMS);
    check("16k chord", &segments(to_frames(&mixed, 16000, false), false).await, &call.truth, 0.15);
    // The same mix at 8 kHz μ-law: before the tone check it was one segment from the first
    // sentence to the end (the chord kept the score above the hold threshold through the
    // pauses); the pauses are now tonal, so it is exactly the sentences.
    let s8 = segments(to_frames(&downsample_8k(&mixed), 8000, true), true).await;
    check("8k chord under speech", &s8, &call.truth, 0.15);
    let chord_8k = segments(to_frames(&downsample_8k(&only_chord), 8000, true), true).await;
    assert!(chord_8k.is_empty(), "8k chord alone: {chord_8k:?}");
}

async fn barge_in_run(pcm: &[i16], allow: bool) -> (usize, usize) {
    let params = PipelineParams {
        start: StartInfo { allow_interruptions: allow, ..StartInfo::default() },
        ..Default::default()
    };
    let h = Harness::with_params(Pipeline::new().with(VadProcessor::new()), params);
    h.emit(Event::BotStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for f in to_frames(pcm, 16000, false) {
        h.push(f).await;
    }
    let out = h.finish().await;
    let interrupts = out.events.iter().filter(|e| matches!(e, Event::Interrupt)).count();
    let starts = out.events.iter().filter(|e| matches!(e, Event::UserStartedSpeaking)).count();
    (interrupts, starts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_needs_sustained_speech_and_permission() {
    if espeak_missing() {
        return;
    }
    let call = build_call().unwrap();
    let (a, b) = call.truth[0];
    let (a, b) = ((a * 16000.0) as usize, (b * 16000.0) as usize);
    let lead = vec![0i16; 8000];
    // A full sentence while the bot speaks: one interruption (not one per window).
    let full: Vec<i16> = lead.iter().copied().chain(call.pcm[a..b].iter().copied()).chain(vec![0; 16000]).collect();
    assert_eq!(barge_in_run(&full, true).await, (1, 1));
    // A short burst (the first 150 ms of speech, a cough's length): no interruption.
    let short: Vec<i16> =
        lead.iter().copied().chain(call.pcm[a..a + 2400].iter().copied()).chain(vec![0; 16000]).collect();
    assert_eq!(barge_in_run(&short, true).await.0, 0);
    // Interruptions not allowed: the user is still heard, the bot is not cut off.
    assert_eq!(barge_in_run(&full, false).await, (0, 1));
}

#[tokio::test]
async fn vad_refuses_bad_formats_and_passes_audio_through() {
    let vad = VadProcessor::new();
    let counters = vad.counters();
    let h = Harness::single(vad);
    h.push(Frame::InputAudio(AudioFrame::new(Bytes::from(vec![0u8; 960]), AudioFormat::pcm16(24000)))).await;
    h.push(Frame::InputAudio(AudioFrame::new(Bytes::from(vec![0u8; 641]), AudioFormat::pcm16(16000)))).await;
    h.push(Frame::InputAudio(AudioFrame::new(Bytes::from(vec![0u8; 640]), AudioFormat::pcm16(16000)))).await;
    h.push(Frame::InputAudio(AudioFrame::new(Bytes::new(), AudioFormat::pcm16(16000)))).await;
    let out = h.finish().await;
    let errors: Vec<String> = out
        .events
        .iter()
        .filter_map(|e| if let Event::Error(e) = e { Some(e.message.to_string()) } else { None })
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("Pcm16 16000 Hz x1 or Pcm16 8000 Hz x1") && errors[0].contains("24000"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("641 bytes"));
    assert_eq!(counters.rejected(), 2);
    // The well-formed frame and the empty one pass through (the VAD never eats audio).
    assert_eq!(out.kinds().len(), 2);
}

#[test]
fn resampled_front_end_is_the_w2_chain() {
    // Compile-time check that the W2 stages compose: decoder → resampler → VAD.
    let _ =
        Pipeline::new().with(MulawDecoder::new()).with(Resampler::new(8000, 16000).unwrap()).with(VadProcessor::new());
}

// ---- Telephone tones, DTMF, clicks and hold music are not speech (issue 13) ----------------
//
// Everything below goes the phone bot's way: 8 kHz audio, μ-law encoded into 20 ms frames,
// `MulawDecoder`, then the VAD at 8 kHz (it upsamples for analysis itself). Tones come from sox
// at telephone levels (dBm0: a 0 dBm0 sine peaks 3.17 dB below μ-law full scale).

fn tool_missing(tool: &str) -> bool {
    let ok = std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipping: {tool} not on PATH (apt-get install {tool})");
    }
    !ok
}

/// `sox -n` synthesis at 8 kHz: `effects` after the output file (e.g. `synth 1 sine 440`).
/// One temp file per call, as `espeak`.
fn sox(effects: &str) -> Vec<i16> {
    let dir = std::env::temp_dir().join(format!("voxline_vad_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("t{n}.raw"));
    let st = std::process::Command::new("sox")
        .args(["-q", "-n", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw"])
        .arg(&path)
        .args(effects.split_whitespace())
        .status()
        .unwrap();
    assert!(st.success(), "sox {effects}");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).ok();
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// Peak level (dBFS, for sox `norm`) of `tones` equal sines of `dbm0` each.
fn peak_db(dbm0: f64, tones: usize) -> f64 {
    dbm0 - 3.17 + 20.0 * (tones as f64).log10()
}

/// A dual tone of `secs` at `dbm0` per tone.
fn dual(secs: f64, f1: f64, f2: f64, dbm0: f64) -> Vec<i16> {
    sox(&format!("synth {secs} sine {f1} sine mix {f2} norm {:.2}", peak_db(dbm0, 2)))
}

fn silence_8k(secs: f64) -> Vec<i16> {
    vec![0; (secs * 8000.0) as usize]
}

/// North American call progress: ringback 440+480 Hz −19 dBm0, 2 s on 4 s off.
fn ringback(cycles: usize) -> Vec<i16> {
    let mut v = Vec::new();
    for _ in 0..cycles {
        v.extend(dual(2.0, 440.0, 480.0, -19.0));
        v.extend(silence_8k(4.0));
    }
    v
}

/// Busy 480+620 Hz −24 dBm0, 0.5 s on 0.5 s off.
fn busy(cycles: usize) -> Vec<i16> {
    let mut v = Vec::new();
    for _ in 0..cycles {
        v.extend(dual(0.5, 480.0, 620.0, -24.0));
        v.extend(silence_8k(0.5));
    }
    v
}

/// DTMF digits, 100 ms tone + 100 ms gap each, −6 dBm0 per tone (a loud keypad).
fn dtmf(digits: &str) -> Vec<i16> {
    let mut v = Vec::new();
    for d in digits.chars() {
        let (row, col) = match d {
            '1' => (697.0, 1209.0),
            '2' => (697.0, 1336.0),
            '3' => (697.0, 1477.0),
            '4' => (770.0, 1209.0),
            '5' => (770.0, 1336.0),
            '6' => (770.0, 1477.0),
            '7' => (852.0, 1209.0),
            '8' => (852.0, 1336.0),
            '9' => (852.0, 1477.0),
            '*' => (941.0, 1209.0),
            '0' => (941.0, 1336.0),
            _ => (941.0, 1477.0),
        };
        v.extend(dual(0.1, row, col, -6.0));
        v.extend(silence_8k(0.1));
    }
    v
}

/// Clicks: 1–3 ms bursts (a hook flash's, a relay's) at uneven spacing, loud.
fn clicks() -> Vec<i16> {
    let mut v = silence_8k(0.2);
    for (len, gap) in [(0.001, 0.35), (0.003, 0.8), (0.002, 0.12), (0.001, 0.6), (0.003, 0.05), (0.002, 1.0)] {
        v.extend(sox(&format!("synth {len} whitenoise norm -3")));
        v.extend(silence_8k(gap));
    }
    // A train of line clicks 60 ms apart for a second.
    for _ in 0..16 {
        v.extend(sox("synth 0.002 square 1000 norm -6"));
        v.extend(silence_8k(0.058));
    }
    v
}

/// Hold music: a plucked melody and a three-sine chord, both changing note every 300 ms.
fn hold_music() -> Vec<i16> {
    let melody = ["A3", "C4", "E4", "A4", "G4", "E4", "C4", "D4", "F4", "A4", "E4", "C4", "B3", "D4", "G4", "C4"];
    let mut v = Vec::new();
    for note in melody {
        v.extend(sox(&format!("synth 0.3 pluck {note} norm -14")));
    }
    let chords = [[220.0, 277.18, 329.63], [246.94, 311.13, 369.99], [196.0, 246.94, 293.66], [261.63, 329.63, 392.0]];
    for _ in 0..3 {
        for c in chords {
            v.extend(sox(&format!(
                "synth 0.3 sine {} sine mix {} sine mix {} norm {:.2}",
                c[0],
                c[1],
                c[2],
                peak_db(-20.0, 3)
            )));
        }
    }
    v
}

fn ulaw_frames_8k(pcm: &[i16]) -> Vec<Frame> {
    to_frames(pcm, 8000, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telephone_tones_dtmf_clicks_and_hold_music_are_not_speech() {
    if tool_missing("sox") {
        return;
    }
    let cases = [
        ("ringback 2 s on 4 s off", ringback(2)),
        ("busy", busy(4)),
        ("dial tone", dual(4.0, 350.0, 440.0, -13.0)),
        ("loud dial tone", dual(4.0, 350.0, 440.0, 0.0)),
        ("dtmf", dtmf("5551234#0*9876")),
        ("clicks", clicks()),
        ("hold music", hold_music()),
    ];
    for (name, pcm) in cases {
        let mut padded = silence_8k(0.5);
        padded.extend(pcm);
        padded.extend(silence_8k(1.0));
        let segs = segments(ulaw_frames_8k(&padded), true).await;
        assert!(segs.is_empty(), "{name}: {segs:?}");
    }
}

/// 8 kHz sentences with tones right before, between and after them; truth in seconds.
fn call_with_tones() -> Option<Call> {
    let mut pcm = silence_8k(0.5);
    let mut truth = Vec::new();
    let mut sentence = |pcm: &mut Vec<i16>, text: &str| -> Option<()> {
        let clip = espeak(text)?;
        let (a, b) = extent(&clip);
        let clip = downsample_8k(&clip[a..b]);
        let base = pcm.len() as f64 / 8000.0;
        truth.push((base, base + (b - a) as f64 / 16000.0));
        pcm.extend(clip);
        Some(())
    };
    // A ringback burst that ends where the first sentence starts.
    pcm.extend(dual(2.0, 440.0, 480.0, -19.0));
    sentence(&mut pcm, SENTENCES[0])?;
    // Busy tone 150 ms after it, then the second sentence right after a burst of it.
    pcm.extend(silence_8k(0.15));
    pcm.extend(busy(2));
    pcm.extend(dual(0.5, 480.0, 620.0, -24.0));
    sentence(&mut pcm, SENTENCES[1])?;
    // DTMF right after the second sentence, a dial tone right before the third.
    pcm.extend(dtmf("4729"));
    pcm.extend(silence_8k(0.8));
    pcm.extend(dual(1.5, 350.0, 440.0, -13.0));
    sentence(&mut pcm, SENTENCES[2])?;
    // A click 200 ms after the last sentence, then hold music after 300 ms.
    pcm.extend(silence_8k(0.2));
    pcm.extend(sox("synth 0.002 whitenoise norm -3"));
    pcm.extend(silence_8k(0.1));
    pcm.extend(hold_music());
    pcm.extend(silence_8k(1.0));
    Some(Call { pcm, truth })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tones_next_to_sentences_neither_move_their_start_nor_stretch_their_end() {
    if espeak_missing() || tool_missing("sox") {
        return;
    }
    let call = call_with_tones().unwrap();
    let (pcm, truth) = (call.pcm, call.truth);
    let segs = segments(ulaw_frames_8k(&pcm), true).await;
    // Start within 150 ms; end within 200 ms (the model's 48 ms context and the end of the last
    // phoneme), i.e. not stretched over the tone, DTMF, click or music after it.
    check("8k ulaw tones", &segs, &truth, 0.15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_over_a_tone_and_noisy_speech_are_still_found() {
    if espeak_missing() || tool_missing("sox") {
        return;
    }
    let call = build_call().unwrap();
    let speech_8k = downsample_8k(&call.pcm);
    // A continuous ringback pair 12 dB under the speech: every sentence still found once.
    let rms = |x: &[i16]| (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let (a, b) = call.truth[0];
    let speech_rms = rms(&speech_8k[(a * 8000.0) as usize..(b * 8000.0) as usize]);
    let tone = dual(speech_8k.len() as f64 / 8000.0 + 0.1, 440.0, 480.0, 0.0);
    let gain = speech_rms / 10f64.powf(12.0 / 20.0) / rms(&tone);
    let mixed: Vec<i16> = speech_8k
        .iter()
        .zip(&tone)
        .map(|(&s, &t)| (f64::from(s) + f64::from(t) * gain).clamp(-32768.0, 32767.0) as i16)
        .collect();
    let segs = segments(ulaw_frames_8k(&mixed), true).await;
    eprintln!("8k speech over ringback: {segs:?} truth {:?}", call.truth);
    assert_eq!(segs.len(), call.truth.len(), "{segs:?}");
    for ((s, e), (a, b)) in segs.iter().zip(&call.truth) {
        assert!((s - a).abs() <= 0.15, "start {s} vs {a}");
        assert!(e.is_some_and(|e| (e - b).abs() <= 0.3), "end {e:?} vs {b}");
    }
    // White noise at 10 dB SNR, 8 kHz μ-law.
    let n10 = add_noise(&call, 10.0);
    check("8k ulaw 10 dB", &segments(ulaw_frames_8k(&downsample_8k(&n10)), true).await, &call.truth, 0.15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_voices_are_segmented_at_8k_ulaw() {
    if espeak_missing() {
        return;
    }
    for voice in ["en-us+m3", "en-us+f2", "en-gb-x-rp", "en-us+f4", "en-us+m7"] {
        let call = build_call_voice(voice).unwrap();
        let segs = segments(ulaw_frames_8k(&downsample_8k(&call.pcm)), true).await;
        check(voice, &segs, &call.truth, 0.15);
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<f32, TurnError>>;

/// A turn model that answers at once from a script of probabilities (then "complete"), keeping
/// the length of audio it was shown; `hold` keeps the reply senders unanswered instead.
#[derive(Clone, Default)]
struct ScriptedTurn {
    script: std::sync::Arc<std::sync::Mutex<Vec<f32>>>,
    shown: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    held: std::sync::Arc<std::sync::Mutex<Vec<Reply>>>,
    hold: bool,
}

impl TurnModel for ScriptedTurn {
    fn submit(&self, audio_16k: Vec<f32>) -> Result<TurnAnswer, TurnError> {
        self.shown.lock().unwrap().push(audio_16k.len());
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.hold {
            self.held.lock().unwrap().push(tx);
        } else {
            let mut s = self.script.lock().unwrap();
            let p = if s.is_empty() { 0.9 } else { s.remove(0) };
            let _ = tx.send(Ok(p));
        }
        Ok(rx)
    }
}

fn turn_vad(model: &ScriptedTurn, fallback_ms: u64) -> VadProcessor {
    let params = VadParams { stop_secs: 0.2, ..VadParams::default() };
    let turn = TurnParams { fallback: Duration::from_millis(fallback_ms), ..TurnParams::default() };
    VadProcessor::with_params(params)
        .unwrap()
        .with_turn_detector(TurnDetector::new(Box::new(model.clone()), turn).unwrap())
}

/// The Twilio front end with an end-of-turn model: a pause the model calls "incomplete" keeps
/// the turn open across the next sentence; "complete" ends it at once, one `EndOfTurn` per turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_turn_follows_the_model_not_the_pause() {
    if espeak_missing() {
        return;
    }
    let call = build_call().unwrap();
    let model = ScriptedTurn { script: std::sync::Arc::new(std::sync::Mutex::new(vec![0.1])), ..Default::default() };
    let h = Harness::new(Pipeline::new().with(MulawDecoder::new()).with(turn_vad(&model, 3000)));
    for f in ulaw_frames_8k(&downsample_8k(&call.pcm)) {
        h.push(f).await;
    }
    let out = h.finish().await;
    let seq: Vec<&str> = out
        .events
        .iter()
        .filter_map(|e| match e {
            Event::UserStartedSpeaking => Some("start"),
            Event::UserStoppedSpeaking => Some("stop"),
            Event::EndOfTurn => Some("end"),
            _ => None,
        })
        .collect();
    assert_eq!(seq, ["start", "stop", "start", "stop", "end", "start", "stop", "end"], "{seq:?}");
    let shown = model.shown.lock().unwrap().clone();
    assert_eq!(shown.len(), 3, "asked at every stop: {shown:?}");
    // The second question holds the whole turn so far: both sentences and the pause between.
    let (a, b) = (call.truth[0].0, call.truth[1].1);
    assert!(shown[1] as f64 / 16000.0 >= b - a, "turn audio {} s < {:.2} s", shown[1] as f64 / 16000.0, b - a);
}

/// A model that never answers cannot leave the caller waiting: the fallback ends the turn,
/// in wall time, with no further audio arriving to poll it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_turn_falls_back_when_the_model_is_silent() {
    if espeak_missing() {
        return;
    }
    let call = build_call().unwrap();
    let (_, b) = call.truth[0];
    let first: Vec<i16> = call.pcm[..((b + 0.5) * 16000.0) as usize].to_vec();
    let model = ScriptedTurn { hold: true, ..Default::default() };
    let mut h = Harness::new(Pipeline::new().with(turn_vad(&model, 300)));
    for f in to_frames(&first, 16000, false) {
        h.push(f).await;
    }
    assert!(h.wait_event(Duration::from_secs(5), |e| matches!(e, Event::UserStoppedSpeaking)).await.is_some());
    let t0 = std::time::Instant::now();
    assert!(h.wait_event(Duration::from_secs(5), |e| matches!(e, Event::EndOfTurn)).await.is_some());
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(1000), "{waited:?}");
    assert_eq!(model.held.lock().unwrap().len(), 1);
    let _ = h.finish().await;
}
