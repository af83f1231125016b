//! The benchmark binary of `bench/SPEC.md`:
//! `cargo run --release --example bench -- <workload> [options]`.
//!
//! Every invocation prints exactly one JSON line on stdout (logs go to stderr). Pin it to one
//! core for comparable figures: `taskset -c 0 target/release/examples/bench w1`.

mod common;
mod e2e;
mod w1;
mod w2;
mod w3;
mod w4;
mod w5;
mod w6;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    match args.first().map(String::as_str) {
        Some("w1") => w1::main(rest),
        Some("w2") => w2::main(rest),
        Some("w3") => w3::main(rest),
        Some("w4") => w4::main(rest),
        Some("w5") => w5::main(rest),
        Some("w6") => w6::main(rest),
        Some("e2e") => e2e::main(rest),
        _ => {
            eprintln!("usage: bench w1|w2|w3|w4|w5|w6|e2e [options]   (see bench/SPEC.md)");
            std::process::exit(2);
        }
    }
}
