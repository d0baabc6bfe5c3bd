//! Data-parallel scaling on this machine: images per second of the seed CNN (42,442 params,
//! synthetic 32x32x3 images, global batch 100) for 1 rank x 2 threads and 2 ranks x 1 thread,
//! the all-reduce time per step and the bytes each rank sends per step.
//!
//! Run: `cargo run --release -p lamb-dist --features mpi --example scaling -- [steps] [batch]`
//! (it starts itself under `mpirun` for each configuration; `LAMB_SCALING_CONFIGS="1x2 2x1 4x1"`
//! picks others as RANKSxTHREADS). Under `mpirun` directly it measures that one configuration.

use std::time::Instant;

use lamb_dist::{
    communicator_from_env, fit, launched_by_mpirun, ring_all_reduce_bytes_sent, synthetic, Launch,
    Parallel,
};
use lamb_nn::{classic_cnn, Activation, FitOptions};
use lamb_optim::{build, OptimizerKind, OptimizerSpec};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One configuration, on every rank of the current MPI world.
fn measure(steps: usize, batch: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut comm = communicator_from_env(true)?;
    let (rank, size) = (comm.rank(), comm.size());
    let threads = rayon::current_num_threads();
    let mut model = classic_cnn(Activation::Relu, 1)?;
    let mut opt = build(&OptimizerSpec::new(OptimizerKind::Lamb))?;
    let warm = synthetic::dataset(3 * batch, [32, 32, 3], 10, 9);
    let train = synthetic::dataset(steps * batch, [32, 32, 3], 10, 1);
    let mut par = Parallel {
        comm: comm.as_mut(),
        accumulate: 1,
    };
    fit(
        &mut model,
        &warm,
        None,
        &FitOptions::new(batch, 1, 1),
        &mut par,
        opt.as_mut(),
        &mut |_| Ok(()),
    )?;
    par.comm.barrier()?;
    par.comm.reset_stats();
    let t = Instant::now();
    fit(
        &mut model,
        &train,
        None,
        &FitOptions::new(batch, 1, 1),
        &mut par,
        opt.as_mut(),
        &mut |_| Ok(()),
    )?;
    let secs = t.elapsed().as_secs_f64();
    let st = par.comm.stats();
    // Pure all-reduce of the gradient buffer, every rank arriving together.
    let mut grad = vec![1.0f32; model.param_count()];
    let reps = 50;
    let mut pure = 0.0;
    for _ in 0..reps {
        par.comm.barrier()?;
        let t = Instant::now();
        par.comm.all_reduce_sum_f32(&mut grad)?;
        pure += t.elapsed().as_secs_f64();
    }
    // Rank 0 reports the slowest rank's figures.
    let mut worst = vec![0.0f64; 2 * size];
    worst[2 * rank] = secs;
    worst[2 * rank + 1] = st.all_reduce_seconds;
    par.comm.all_reduce_sum_f64(&mut worst)?;
    if rank == 0 {
        let secs = worst.chunks(2).map(|c| c[0]).fold(0.0, f64::max);
        let ar = worst.chunks(2).map(|c| c[1]).fold(0.0, f64::max);
        let grad_bytes = (model.param_count() * 4) as u64;
        let payload = if size > 1 {
            st.all_reduce_bytes / steps as u64
        } else {
            0
        };
        let sent =
            ring_all_reduce_bytes_sent(grad_bytes, size) + ring_all_reduce_bytes_sent(32, size);
        println!(
            "{size} rank{} x {threads} thread{}: {:>7.1} images/s, {:>6.2} ms/step, all-reduce {:>6.3} ms/step \
             (incl. waiting; pure {:.3} ms), payload {payload} B/step, sent per rank ~{sent} B/step (ring)",
            if size == 1 { " " } else { "s" },
            if threads == 1 { " " } else { "s" },
            (steps * batch) as f64 / secs,
            1e3 * secs / steps as f64,
            1e3 * ar / steps as f64,
            if size > 1 { 1e3 * pure / reps as f64 } else { 0.0 },
        );
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (steps, batch) = (arg(1, 40), arg(2, 100));
    if launched_by_mpirun() {
        return measure(steps, batch);
    }
    let configs = std::env::var("LAMB_SCALING_CONFIGS").unwrap_or_else(|_| "1x2 2x1".into());
    println!(
        "seed CNN, global batch {batch}, {steps} timed steps after a 3-step warm-up, synthetic 32x32x3 images, LAMB; \
         {} cores here",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    for c in configs.split_whitespace() {
        let (r, t) = c
            .split_once('x')
            .ok_or_else(|| format!("configuration {c}: expected RANKSxTHREADS"))?;
        let mut l = Launch::new(r.parse()?);
        l.threads_per_worker = Some(t.parse()?);
        let args: Vec<std::ffi::OsString> =
            vec![steps.to_string().into(), batch.to_string().into()];
        let status = l
            .command(std::env::current_exe()?.as_os_str(), &args)?
            .status()?;
        if !status.success() {
            return Err(format!("configuration {c} failed: {status}").into());
        }
    }
    Ok(())
}
