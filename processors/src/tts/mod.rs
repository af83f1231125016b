//! Placeholder: filled in by the tts work.
