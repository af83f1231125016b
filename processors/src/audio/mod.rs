//! Placeholder: filled in by the audio work.
