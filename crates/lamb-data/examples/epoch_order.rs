//! Writes the order in which `lamb train` visits the training images, so that a peer (the
//! Keras side of the ResNet-20 parity check, `tools/keras_resnet20_parity.py`) can train on
//! exactly the same batches. Run: `cargo run --release -p lamb-data --example epoch_order --
//! SEED EPOCHS N OUT`; OUT holds EPOCHS x N little-endian u32 indices, epoch after epoch
//! (`lamb_data::epoch_permutation(SEED, e, N)` for e = 0, 1, ...). That is `lamb train`'s order
//! over its whole training set with one worker; with `--validation-split`, `--limit-train` or
//! several workers the visited indices differ.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: epoch_order SEED EPOCHS N OUT";
    let [seed, epochs, n, out] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let parse = |what: &str, s: &str| {
        s.parse::<u64>().unwrap_or_else(|_| {
            eprintln!("{what} = {s:?} is not a non-negative integer; {usage}");
            std::process::exit(2)
        })
    };
    let (seed, epochs, n) = (
        parse("SEED", seed),
        parse("EPOCHS", epochs),
        parse("N", n) as usize,
    );
    if n > u32::MAX as usize {
        eprintln!("N = {n} is above {}", u32::MAX);
        std::process::exit(2);
    }
    let mut bytes = Vec::with_capacity(epochs as usize * n * 4);
    for e in 0..epochs {
        for i in lamb_data::epoch_permutation(seed, e, n) {
            bytes.extend_from_slice(&(i as u32).to_le_bytes());
        }
    }
    let written = std::fs::File::create(out).and_then(|mut f| f.write_all(&bytes));
    if let Err(e) = written {
        eprintln!("{out}: {e}");
        std::process::exit(1);
    }
}
