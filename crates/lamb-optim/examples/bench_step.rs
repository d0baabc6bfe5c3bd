//! Prints step times of every optimizer on the seed CNN and BERT-base tensor sets, next to a
//! STREAM triad. Run: `cargo run --release -p lamb-optim --example bench_step [threads] [steps]`.

fn main() {
    let mut cfg = lamb_optim::bench::BenchConfig::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(t) = args.first().and_then(|s| s.parse().ok()) {
        cfg.threads = t;
    }
    if let Some(s) = args.get(1).and_then(|s| s.parse().ok()) {
        cfg.steps = s;
    }
    if args.iter().any(|a| a == "--bert-only") {
        cfg.sets.retain(|(l, _)| l.starts_with("BERT"));
    }
    if let Some(f) = args.iter().find_map(|a| a.strip_prefix("--only=")) {
        cfg.optimizers.retain(|(l, _)| l.contains(f));
    }
    println!("{}", lamb_optim::bench::run_step_benchmark(&cfg));
}
