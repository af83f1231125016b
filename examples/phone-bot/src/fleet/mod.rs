//! What outlives a call and is shared by every instance: the store ([`store`]), the post-call job
//! queue ([`jobs`]), the shared live-call registry, rate limits and cache ([`shared_state`]) and
//! the post-call workflow ([`workflow`]).

pub mod jobs;
pub mod shared_state;
pub mod store;
pub mod workflow;
