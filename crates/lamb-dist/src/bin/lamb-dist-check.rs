//! Trains a small model on synthetic data with `lamb_dist::fit` and writes the final weights
//! (little-endian f32, parameter order) from rank 0, after checking that every rank holds the
//! same weights. Used by the MPI equivalence test: run it under `mpirun -np 2` and with
//! `--single` (no MPI) and compare the files.
//!
//! Usage: lamb-dist-check --out FILE [--single] [--batch 100] [--epochs 2] [--images 400]
//!        [--accumulate 1] [--lr 0.01]

use std::process::ExitCode;

use lamb_dist::{
    check_in_sync, communicator_from_env, fit, synthetic, Communicator, Parallel, SingleProcess,
};
use lamb_nn::FitOptions;
use lamb_optim::{build, OptimizerKind, OptimizerSpec};

struct Args {
    out: std::path::PathBuf,
    single: bool,
    batch: usize,
    epochs: usize,
    images: usize,
    accumulate: usize,
    lr: f32,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        out: "".into(),
        single: false,
        batch: 100,
        epochs: 2,
        images: 400,
        accumulate: 1,
        lr: 1e-2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--single" {
            a.single = true;
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{k} {v}: {e}"));
        match k.as_str() {
            "--out" => a.out = v.into(),
            "--batch" => a.batch = num(&v)?,
            "--epochs" => a.epochs = num(&v)?,
            "--images" => a.images = num(&v)?,
            "--accumulate" => a.accumulate = num(&v)?,
            "--lr" => a.lr = v.parse().map_err(|e| format!("--lr {v}: {e}"))?,
            _ => return Err(format!("unknown argument {k}; valid: --out --single --batch --epochs --images --accumulate --lr")),
        }
    }
    if a.out.as_os_str().is_empty() {
        return Err("--out FILE is required".into());
    }
    Ok(a)
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut comm: Box<dyn Communicator> = if a.single {
        Box::new(SingleProcess::new())
    } else {
        communicator_from_env(true)?
    };
    let train = synthetic::dataset(a.images, [8, 8, 3], 10, 1);
    let val = synthetic::dataset(130, [8, 8, 3], 10, 2);
    let mut model = synthetic::small_cnn(7)?;
    let mut opt = build(&OptimizerSpec {
        learning_rate: Some(a.lr),
        ..OptimizerSpec::new(OptimizerKind::Lamb)
    })?;
    let opts = FitOptions::new(a.batch, a.epochs, 3);
    let mut par = Parallel {
        comm: comm.as_mut(),
        accumulate: a.accumulate,
    };
    let history = fit(
        &mut model,
        &train,
        Some(&val),
        &opts,
        &mut par,
        opt.as_mut(),
        &mut |_| Ok(()),
    )?;
    check_in_sync(&model, comm.as_mut())?;
    if comm.rank() == 0 {
        let bytes: Vec<u8> = model
            .flat_params()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&a.out, bytes)?;
        let last = history.epochs.last().ok_or("no epoch completed")?;
        println!(
            "{}: {} epochs, loss {:.6}, val_loss {:.6}, {} all-reduces",
            comm.describe(),
            history.epochs.len(),
            last.loss,
            last.val_loss.unwrap_or(f64::NAN),
            comm.stats().all_reduce_calls
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lamb-dist-check: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lamb-dist-check: {e}");
            ExitCode::FAILURE
        }
    }
}
