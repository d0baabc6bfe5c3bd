//! Cost of making training batches with and without augmentation, alternating:
//! `cargo run --release -p lamb-data --example pipeline_time -- PATH [CACHE_DIR]`.
//! Fills one epoch of batches of 100 (the seed CNN's steps) five times each way, alternating
//! `Dataset::fill_batch` (what the engine calls today), the pipeline scaling only,
//! standardized, and standardized + `crop=4,flip`; prints the medians.

use std::path::PathBuf;
use std::time::Instant;

use lamb_data::{epoch_permutation, Augment, InputPipeline, Standardize};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: pipeline_time PATH [CACHE_DIR]")?);
    let splits = match args.next() {
        Some(cache) => lamb_data::load_cached(&path, &PathBuf::from(cache))?,
        None => lamb_data::load(&path)?,
    };
    let train = &splits.train;
    let bs = 100;
    let mut x = vec![0.0f32; bs * train.image_len()];
    let mut base = Vec::new();
    let mut y = vec![0u8; bs];
    let std = Standardize::from_dataset(train);
    let pipelines = [
        ("scale only", InputPipeline::default()),
        (
            "standardize",
            InputPipeline {
                standardize: Some(std.clone()),
                ..Default::default()
            },
        ),
        (
            "standardize + crop=4,flip",
            InputPipeline {
                standardize: Some(std),
                augment: "crop=4,flip".parse::<Augment>()?,
                seed: 1,
            },
        ),
    ];
    let mut times = vec![Vec::new(); pipelines.len()];
    for epoch in 0..5u64 {
        let order = epoch_permutation(1, epoch, train.len());
        let t = Instant::now();
        for idx in order.chunks(bs) {
            let n = idx.len() * train.image_len();
            train.fill_batch(idx, &mut x[..n], &mut y[..idx.len()]);
        }
        base.push(t.elapsed().as_secs_f64());
        for (k, (_, p)) in pipelines.iter().enumerate() {
            let t = Instant::now();
            for idx in order.chunks(bs) {
                let b = idx.len();
                let n = b * train.image_len();
                p.fill_train_batch(train, idx, epoch, &mut x[..n], &mut y[..b]);
            }
            times[k].push(t.elapsed().as_secs_f64());
        }
    }
    println!(
        "Dataset::fill_batch (today's engine): median {:.3} s per epoch",
        median(base)
    );
    for ((name, _), t) in pipelines.iter().zip(times) {
        println!(
            "{name}: median {:.3} s per epoch of {} images",
            median(t),
            train.len()
        );
    }
    Ok(())
}
