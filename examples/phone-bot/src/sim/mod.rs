//! Keyless simulation and load tooling, all against the in-process provider emulators: one
//! simulated call and the end-to-end turn benchmark ([`simulate`]), the two-instance soak with a
//! SIGKILL ([`soak`]) and concurrency at the socket ([`socket_bench`]).

pub mod simulate;
pub mod soak;
pub mod socket_bench;
