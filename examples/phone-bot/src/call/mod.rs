//! One call: the pipeline build ([`bot`]), the skills the LLM may call ([`skills`]) and the
//! recorder that turns the pipeline's events into the call record ([`recorder`]).

pub mod bot;
pub mod recorder;
pub mod skills;
