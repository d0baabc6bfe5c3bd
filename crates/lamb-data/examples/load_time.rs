//! Measures load times: `cargo run --release -p lamb-data --example load_time -- PATH [CACHE_DIR]`.
//! Loads PATH directly three times, then (with CACHE_DIR) once through the cache to fill it and
//! three times from it; prints each time and the median; then alternates reading the cache entry
//! with reading the same data in the official binary layout (the previous cache format).

use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: load_time PATH [CACHE_DIR]")?);
    let cache = args.next().map(PathBuf::from);
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let s = lamb_data::load(&path)?;
        let dt = t.elapsed().as_secs_f64();
        println!(
            "load: {dt:.3} s ({} train, {} test)",
            s.train.len(),
            s.test.len()
        );
        times.push(dt);
    }
    println!("load median: {:.3} s", median(times));
    if let Some(cache) = cache {
        let t = Instant::now();
        lamb_data::load_cached(&path, &cache)?;
        println!(
            "first load_cached (import): {:.3} s",
            t.elapsed().as_secs_f64()
        );
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let s = lamb_data::load_cached(&path, &cache)?;
            let dt = t.elapsed().as_secs_f64();
            println!("cached load: {dt:.3} s ({} train)", s.train.len());
            times.push(dt);
        }
        println!("cached load median: {:.3} s", median(times));
        let entry = lamb_data::cache_entry_path(&path, &cache, &Default::default())?;
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            lamb_data::read_cache_entry(&entry)?;
            times.push(t.elapsed().as_secs_f64());
        }
        println!(
            "read_cache_entry (checksum verified) median: {:.3} s",
            median(times)
        );
        // The previous cache format was the official binary layout read by read_official:
        // alternate the two readers on the same data.
        let official = cache.join("official-layout-for-comparison");
        lamb_data::write_official(&lamb_data::read_cache_entry(&entry)?, &official)?;
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            lamb_data::read_official(&official)?;
            old.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            lamb_data::read_cache_entry(&entry)?;
            new.push(t.elapsed().as_secs_f64());
        }
        println!(
            "alternating, median of 5: read_official {:.3} s, read_cache_entry {:.3} s",
            median(old),
            median(new)
        );
        std::fs::remove_dir_all(&official)?;
    }
    Ok(())
}
