//! Placeholder: filled in by the text work.
