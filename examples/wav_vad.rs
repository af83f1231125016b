//! A WAV file through the VAD: print the speech segments it finds.
//!
//! ```sh
//! espeak-ng -w /tmp/hello.wav "Hello there. I would like to check my order, please."
//! cargo run --release --example wav_vad -- /tmp/hello.wav
//! ```
//!
//! The file (any rate, mono) is resampled to 16 kHz and fed as fast as the pipeline takes it;
//! the VAD reports each transition with the presentation time of the frame that confirmed it,
//! so the segments are in file time, not wall time.

use std::sync::{Arc, Mutex};

use voxline::pipeline::{Frame, Pipeline, PipelineParams, PipelineTask};
use voxline::processors::audio::{Resampler, VadProcessor};
use voxline::transports::wav::{Pacing, WavInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: wav_vad FILE.wav")?;
    let wav = WavInput::open(&path)?;
    println!("{path}: {:.2} s at {} Hz", wav.duration().as_secs_f64(), wav.format().sample_rate);

    // (start, end) in seconds of file time; `on_transition` runs inside the VAD stage.
    type Segments = Vec<(f64, Option<f64>)>;
    let segments: Arc<Mutex<Segments>> = Arc::default();
    let sink = segments.clone();
    let vad = VadProcessor::new().on_transition(move |t| {
        let at = t.frame_pts.map_or(0.0, |p| p.as_secs_f64());
        let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
        if t.speaking {
            s.push((at, None));
        } else if let Some(last) = s.last_mut() {
            last.1 = Some(at);
        }
    });
    let pipeline = Pipeline::new().with(Resampler::new(wav.format().sample_rate, 16_000)?).with(vad);
    let mut params = PipelineParams::default();
    params.start.input_audio = wav.format();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let task = PipelineTask::new(pipeline, params);
        let handle = task.handle();
        let run = tokio::spawn(task.run());
        wav.feed(&handle, Pacing::AsFastAsPossible).await;
        let _ = handle.push(Frame::End).await;
        run.await
    })?;

    // Times are when the VAD confirmed the transition: its start and stop delays after the
    // true onset and end of speech.
    for (i, (start, end)) in segments.lock().unwrap_or_else(|p| p.into_inner()).iter().enumerate() {
        match end {
            Some(end) => println!("segment {}: {start:.2} s – {end:.2} s", i + 1),
            None => println!("segment {}: {start:.2} s – end of file", i + 1),
        }
    }
    Ok(())
}
