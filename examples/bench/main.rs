//! The benchmark binary of `bench/SPEC.md`: `cargo run --release --example bench -- <workload> [options]`.
//! Prints exactly one JSON line on stdout per invocation.

mod w2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("w2") => w2::main(&args[1..]),
        _ => {
            eprintln!("usage: bench w1|w2|w3|w4|w5 [options]");
            std::process::exit(2);
        }
    }
}
