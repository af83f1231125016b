//! Placeholder: filled in by the stt work.
