//! W2: audio front end (μ-law decode → resample → VAD). Filled in by the audio work.

pub(crate) fn main(_args: &[String]) {
    eprintln!("w2: not built yet");
    std::process::exit(2);
}
