//! Prints step times of every optimizer on the seed CNN and BERT-base tensor sets, next to a
//! STREAM triad. Run: `cargo run --release -p lamb-optim --example bench_step [threads] [steps]`
//! with optional `--bert-only`, `--cnn-only`, `--only=LABEL-PART`, `--lean` (adds LAMB with
//! `StepMemory::Lean`), and `--torch=PYTHON`
//! (`--pairs=N`) for the alternating comparison with PyTorch's fused Adam/AdamW.

use std::path::Path;

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
    if args.iter().any(|a| a == "--cnn-only") {
        cfg.sets.retain(|(l, _)| !l.starts_with("BERT"));
    }
    if args.iter().any(|a| a == "--lean") {
        // LAMB without scratch beside the default (StepMemory::Fast), checked and unchecked.
        let lamb = cfg
            .optimizers
            .iter()
            .filter(|(l, _)| l.starts_with("lamb (tfa"))
            .cloned()
            .collect::<Vec<_>>();
        for (l, s) in lamb {
            let spec = lamb_optim::OptimizerSpec {
                step_memory: Some(lamb_optim::StepMemory::Lean),
                ..s
            };
            cfg.optimizers.push((format!("{l} lean"), spec));
        }
    }
    if let Some(f) = args.iter().find_map(|a| a.strip_prefix("--only=")) {
        cfg.optimizers.retain(|(l, _)| l.contains(f));
    }
    if let Some(py) = args.iter().find_map(|a| a.strip_prefix("--torch=")) {
        let tools = Path::new("../shared/tools");
        let tools = tools.join("bert_shapes.py").is_file().then_some(tools);
        let mut peer =
            lamb_optim::bench::torch::TorchPeer::start(Path::new(py), cfg.threads, tools)
                .unwrap_or_else(|e| panic!("{e}"));
        let pairs = args
            .iter()
            .find_map(|a| a.strip_prefix("--pairs="))
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let c = lamb_optim::bench::CompareConfig {
            pairs,
            steps: cfg.steps,
            threads: cfg.threads,
            sets: cfg.sets,
            optimizers: cfg.optimizers,
            triad_elems: cfg.triad_elems,
            ..Default::default()
        };
        match lamb_optim::bench::run_comparison(&c, &mut peer) {
            Ok(r) => println!("{r}"),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    println!("{}", lamb_optim::bench::run_step_benchmark(&cfg));
}
