//! Prints the engine benchmark:
//! `cargo run --release -p lamb-nn --example bench [epochs] [batch...] [selu]` (`selu`: that
//! hidden activation instead of ReLU).

fn main() -> Result<(), lamb_nn::NnError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = lamb_nn::bench::BenchConfig::default();
    if let Some(e) = args.first().and_then(|a| a.parse().ok()) {
        cfg.epochs = e;
    }
    let sizes: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if !sizes.is_empty() {
        cfg.batch_sizes = sizes;
    }
    if args.iter().any(|a| a == "selu") {
        cfg.hidden = lamb_nn::Activation::Selu;
    }
    if let Ok(v) = std::env::var("LAMB_BENCH_TRAIN_IMAGES") {
        cfg.train_images = v.parse().unwrap_or(cfg.train_images);
    }
    if let Ok(v) = std::env::var("LAMB_BENCH_VAL_BATCH") {
        cfg.val_batch_size = v.parse().unwrap_or(cfg.val_batch_size);
    }
    if let Ok(v) = std::env::var("LAMB_BENCH_VAL_IMAGES") {
        cfg.val_images = v.parse().unwrap_or(cfg.val_images);
    }
    let results = lamb_nn::bench::run(&cfg)?;
    print!("{}", lamb_nn::bench::format_report(&cfg, &results));
    Ok(())
}
