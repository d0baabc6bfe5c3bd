//! A character-level GPT (nanoGPT's CPU configuration: 4 layers, 4 heads, 128-dimensional
//! embeddings, context 64, no dropout, learned positions, pre-LayerNorm blocks, GELU MLPs, the
//! output layer tied to the token embedding, nanoGPT's initialisation) trained on
//! tinyshakespeare with our LAMB (`lamb_candle::Lamb`) or candle-nn's `AdamW`, on the same
//! number of tokens at any batch size.
//!
//! The recipe is nanoGPT's `shakespeare_char` one for both optimizers: betas (0.9, 0.99), weight
//! decay 0.1 on the matrices and embeddings (not on biases and LayerNorm), gradients clipped to
//! global norm 1, linear warmup then cosine decay to a tenth of the rate. Validation loss is
//! measured on the same 256 windows of the last 10% of the text in every run.
//!
//! ```text
//! cargo run --release -p lamb-candle --example char_gpt -- run --optimizer lamb --batch 12 --lr 2e-3 --out OUT
//! cargo run --release -p lamb-candle --example char_gpt -- grid --out OUT [--steps-at-12 N]
//! ```
//! `grid`: LAMB and AdamW at batch 12 and 384, each at 0.5x, 1x and 2x a centre rate (scaled by
//! the square root of the batch ratio at 384), skipping runs whose `result.json` exists (an
//! interrupted grid resumes); writes `results.csv`, `table.md` and `curves.svg` in OUT.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Module, Tensor, Var};
use candle_nn::{AdamW, Embedding, Linear, Optimizer, ParamsAdamW, VarMap};
use lamb_candle::{Lamb, LambConfig, LambPreset};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Makes a named parameter: (name, shape, std, fill), see [`param`].
type MakeParam<'a> = dyn FnMut(&str, &[usize], f32, f32) -> Res<Tensor> + 'a;

/// Model shape.
#[derive(Clone, Copy, Debug)]
struct Shape {
    layers: usize,
    heads: usize,
    embd: usize,
    block: usize,
    vocab: usize,
}

impl Shape {
    /// nanoGPT's CPU configuration.
    fn nano(vocab: usize) -> Self {
        Shape {
            layers: 4,
            heads: 4,
            embd: 128,
            block: 64,
            vocab,
        }
    }
}

/// Creates a variable in `map` under `name`, drawn from N(0, std) (or constant `fill` when
/// `std` is 0) with a seeded generator, so runs are reproducible.
fn param(
    map: &VarMap,
    rng: &mut ChaCha8Rng,
    name: &str,
    shape: &[usize],
    std: f32,
    fill: f32,
) -> Res<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = if std == 0.0 {
        vec![fill; n]
    } else {
        (0..n)
            .map(|_| {
                // Box-Muller.
                let (u, v): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
                std * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect()
    };
    let var = Var::from_vec(values, shape, &Device::Cpu)?;
    let t = var.as_tensor().clone();
    map.data()
        .lock()
        .map_err(|_| "poisoned")?
        .insert(name.to_string(), var);
    Ok(t)
}

/// LayerNorm over the last dimension from differentiable tensor operations (candle-nn's
/// `LayerNorm` takes a fused path with no backward pass for contiguous inputs, which stops the
/// gradient of every earlier layer).
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        LayerNorm { weight, bias, eps }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(candle_core::D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    fc: Linear,
    proj: Linear,
}

/// The model: nanoGPT's `GPT` with `bias=True`, `dropout=0`.
struct Gpt {
    shape: Shape,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// 0 where a position may attend, -inf above the diagonal.
    mask: Tensor,
}

impl Gpt {
    fn new(shape: Shape, map: &VarMap, seed: u64) -> Res<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let c = shape.embd;
        let resid = 0.02 / (2.0 * shape.layers as f32).sqrt();
        let mut p = |name: &str, dims: &[usize], std: f32, fill: f32| {
            param(map, &mut rng, name, dims, std, fill)
        };
        let wte = p("wte.weight", &[shape.vocab, c], 0.02, 0.0)?;
        let wpe = p("wpe.weight", &[shape.block, c], 0.02, 0.0)?;
        let ln = |p: &mut MakeParam, name: &str| {
            Ok::<_, Box<dyn std::error::Error>>(LayerNorm::new(
                p(&format!("{name}.weight"), &[c], 0.0, 1.0)?,
                p(&format!("{name}.bias"), &[c], 0.0, 0.0)?,
                1e-5,
            ))
        };
        let lin = |p: &mut MakeParam, name: &str, out: usize, inp: usize, std: f32| {
            Ok::<_, Box<dyn std::error::Error>>(Linear::new(
                p(&format!("{name}.weight"), &[out, inp], std, 0.0)?,
                Some(p(&format!("{name}.bias"), &[out], 0.0, 0.0)?),
            ))
        };
        let mut blocks = Vec::new();
        for l in 0..shape.layers {
            let h = format!("h.{l}");
            blocks.push(Block {
                ln_1: ln(&mut p, &format!("{h}.ln_1"))?,
                attn: lin(&mut p, &format!("{h}.attn.c_attn"), 3 * c, c, 0.02)?,
                attn_proj: lin(&mut p, &format!("{h}.attn.c_proj"), c, c, resid)?,
                ln_2: ln(&mut p, &format!("{h}.ln_2"))?,
                fc: lin(&mut p, &format!("{h}.mlp.c_fc"), 4 * c, c, 0.02)?,
                proj: lin(&mut p, &format!("{h}.mlp.c_proj"), c, 4 * c, resid)?,
            });
        }
        let ln_f = ln(&mut p, "ln_f")?;
        let t = shape.block;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu)?;
        Ok(Gpt {
            shape,
            wte,
            wpe,
            blocks,
            ln_f,
            mask,
        })
    }

    fn attention(&self, b: &Block, x: &Tensor) -> Res<Tensor> {
        let (bs, t, c) = x.dims3()?;
        let (nh, hd) = (self.shape.heads, c / self.shape.heads);
        let qkv = b.attn.forward(x)?;
        let head = |i: usize| -> Res<Tensor> {
            Ok(qkv
                .narrow(2, i * c, c)?
                .reshape((bs, t, nh, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (head(0)?, head(1)?, head(2)?);
        let att = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = att.broadcast_add(&self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((bs, t, c))?;
        Ok(b.attn_proj.forward(&y)?)
    }

    /// Logits (batch, time, vocab) of token ids (batch, time).
    fn forward(&self, idx: &Tensor) -> Res<Tensor> {
        let (_, t) = idx.dims2()?;
        let tok = Embedding::new(self.wte.clone(), self.shape.embd).forward(idx)?;
        let mut x = tok.broadcast_add(&self.wpe.narrow(0, 0, t)?)?;
        for b in &self.blocks {
            x = (&x + self.attention(b, &b.ln_1.forward(&x)?)?)?;
            let h = b.fc.forward(&b.ln_2.forward(&x)?)?.gelu_erf()?;
            x = (&x + b.proj.forward(&h)?)?;
        }
        let x = self.ln_f.forward(&x)?;
        Ok(x.broadcast_matmul(&self.wte.t()?)?)
    }

    /// Mean cross-entropy of next-token prediction.
    fn loss(&self, x: &Tensor, y: &Tensor) -> Res<Tensor> {
        let logits = self.forward(x)?;
        let (b, t, v) = logits.dims3()?;
        Ok(candle_nn::loss::cross_entropy(
            &logits.reshape((b * t, v))?,
            &y.reshape(b * t)?,
        )?)
    }
}

/// The text as token ids, and the alphabet.
struct Corpus {
    chars: Vec<char>,
    train: Vec<u32>,
    val: Vec<u32>,
}

impl Corpus {
    /// Character-level encoding of `text`: first 90% train, last 10% validation.
    fn new(text: &str) -> Res<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        let index: HashMap<char, u32> = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        let ids: Vec<u32> = text.chars().map(|c| index[&c]).collect();
        let cut = ids.len() * 9 / 10;
        if cut < 1000 || ids.len() - cut < 200 {
            return Err(format!(
                "the text has {} characters; need at least ~2,000 for a 90/10 split",
                ids.len()
            )
            .into());
        }
        Ok(Corpus {
            chars,
            val: ids[cut..].to_vec(),
            train: ids[..cut].to_vec(),
        })
    }
}

/// Input and target windows starting at `starts` (nanoGPT's `get_batch`).
fn windows(data: &[u32], starts: &[usize], t: usize) -> Res<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(starts.len() * t);
    let mut y = Vec::with_capacity(starts.len() * t);
    for &s in starts {
        x.extend_from_slice(&data[s..s + t]);
        y.extend_from_slice(&data[s + 1..s + t + 1]);
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(x, (starts.len(), t), &dev)?,
        Tensor::from_vec(y, (starts.len(), t), &dev)?,
    ))
}

/// One training run's settings.
#[derive(Clone, Debug)]
struct RunSpec {
    optimizer: String,
    batch: usize,
    lr: f64,
    steps: usize,
    warmup: usize,
    seed: u64,
}

impl RunSpec {
    /// The run's directory name: everything that changes its numbers.
    fn name(&self) -> String {
        format!(
            "{}-b{}-lr{}-steps{}-seed{}",
            self.optimizer, self.batch, self.lr, self.steps, self.seed
        )
    }

    /// Linear warmup to `lr`, then cosine decay to `lr / 10` at the last step.
    fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let ratio = ((step - self.warmup) as f64 / span).min(1.0);
        let min = self.lr / 10.0;
        min + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (self.lr - min)
    }
}

/// Warmup steps: 5% of the run, at least 8 (the LAMB paper lengthens warmup at large batches;
/// at batch 12 this is nanoGPT's 100 of 2,000).
fn warmup_for(steps: usize) -> usize {
    (steps / 20).max(8).min(steps)
}

/// Our LAMB, or candle-nn's AdamW in two groups (decayed, not decayed) as nanoGPT's
/// `configure_optimizers`.
enum Opt {
    Lamb(Box<Lamb>),
    AdamW(AdamW, AdamW),
}

impl Opt {
    fn new(kind: &str, map: &VarMap, lr: f64) -> Res<Self> {
        let decayed = |name: &str| !(name.contains("bias") || name.contains("ln_"));
        match kind {
            "lamb" => {
                let mut cfg = LambConfig::preset(LambPreset::Tfa)
                    .with_learning_rate(lr as f32)
                    .with_weight_decay(0.1)
                    .with_exclusions(&["bias", "ln_"], &[]);
                cfg.beta_2 = 0.99;
                Ok(Opt::Lamb(Box::new(Lamb::from_varmap(map, cfg)?)))
            }
            "adamw" => {
                let data = map.data().lock().map_err(|_| "poisoned")?;
                let mut named: Vec<(&String, &Var)> = data.iter().collect();
                named.sort_by(|a, b| a.0.cmp(b.0));
                let group = |d: bool| -> Vec<Var> {
                    named
                        .iter()
                        .filter(|(n, _)| decayed(n) == d)
                        .map(|(_, v)| (*v).clone())
                        .collect()
                };
                let params = |wd: f64| ParamsAdamW {
                    lr,
                    beta1: 0.9,
                    beta2: 0.99,
                    eps: 1e-8,
                    weight_decay: wd,
                };
                Ok(Opt::AdamW(
                    AdamW::new(group(true), params(0.1))?,
                    AdamW::new(group(false), params(0.0))?,
                ))
            }
            other => Err(format!("--optimizer {other:?}: expected lamb or adamw").into()),
        }
    }

    fn set_lr(&mut self, lr: f64) {
        match self {
            Opt::Lamb(o) => o.set_learning_rate(lr),
            Opt::AdamW(a, b) => {
                a.set_learning_rate(lr);
                b.set_learning_rate(lr);
            }
        }
    }

    fn step(&mut self, grads: &GradStore) -> Res<()> {
        match self {
            Opt::Lamb(o) => o.step(grads)?,
            Opt::AdamW(a, b) => {
                a.step(grads)?;
                b.step(grads)?;
            }
        }
        Ok(())
    }
}

/// Scales every gradient so that their global L2 norm is at most `max` (PyTorch's
/// `clip_grad_norm_`, as nanoGPT calls it); returns the norm before clipping.
fn clip(grads: &mut GradStore, vars: &[Var], max: f64) -> Res<f64> {
    let mut sum = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sum.sqrt();
    let coef = max / (norm + 1e-6);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.get(v) {
                let scaled = (g * coef)?;
                grads.insert(v, scaled);
            }
        }
    }
    Ok(norm)
}

/// Mean validation loss over fixed windows, in batches of 64.
fn validate(model: &Gpt, corpus: &Corpus, starts: &[usize]) -> Res<f64> {
    let mut total = 0.0;
    for chunk in starts.chunks(64) {
        let (x, y) = windows(&corpus.val, chunk, model.shape.block)?;
        total += model.loss(&x, &y)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
    }
    Ok(total / starts.len() as f64)
}

/// What a run reports.
#[derive(Debug, Clone)]
struct Outcome {
    spec: RunSpec,
    /// (tokens, step, validation loss, training loss of the last step, seconds).
    evals: Vec<(usize, usize, f64, f64, f64)>,
    seconds: f64,
}

impl Outcome {
    fn best(&self) -> f64 {
        self.evals.iter().map(|e| e.2).fold(f64::INFINITY, f64::min)
    }
    fn last(&self) -> f64 {
        self.evals.last().map_or(f64::NAN, |e| e.2)
    }
}

/// Trains one model; validates at 10 evenly spaced points and at the end.
fn train(corpus: &Corpus, spec: &RunSpec, evals: usize, log: bool) -> Res<Outcome> {
    let shape = Shape::nano(corpus.chars.len());
    let map = VarMap::new();
    let model = Gpt::new(shape, &map, 1337)?;
    let vars = map.all_vars();
    let mut opt = Opt::new(&spec.optimizer, &map, spec.lr)?;
    let t = shape.block;
    // The same validation windows in every run; training batches from the run's seed.
    let mut vrng = ChaCha8Rng::seed_from_u64(1234);
    let vstarts: Vec<usize> = (0..256)
        .map(|_| vrng.gen_range(0..corpus.val.len() - t - 1))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let started = Instant::now();
    let mut out = Outcome {
        spec: spec.clone(),
        evals: Vec::new(),
        seconds: 0.0,
    };
    let every = spec.steps.div_ceil(evals).max(1);
    for step in 0..spec.steps {
        opt.set_lr(spec.lr_at(step));
        let starts: Vec<usize> = (0..spec.batch)
            .map(|_| rng.gen_range(0..corpus.train.len() - t - 1))
            .collect();
        let (x, y) = windows(&corpus.train, &starts, t)?;
        let loss = model.loss(&x, &y)?;
        let train_loss = loss.to_scalar::<f32>()? as f64;
        if !train_loss.is_finite() {
            return Err(format!("{}: loss {train_loss} at step {step}", spec.name()).into());
        }
        let mut grads = loss.backward()?;
        clip(&mut grads, &vars, 1.0)?;
        opt.step(&grads)?;
        if (step + 1) % every == 0 || step + 1 == spec.steps {
            let v = validate(&model, corpus, &vstarts)?;
            let secs = started.elapsed().as_secs_f64();
            let tokens = (step + 1) * spec.batch * t;
            out.evals.push((tokens, step + 1, v, train_loss, secs));
            if log {
                eprintln!(
                    "{} step {:>5}/{} tokens {tokens:>8} train {train_loss:.4} val {v:.4} ({secs:.0} s)",
                    spec.name(),
                    step + 1,
                    spec.steps
                );
            }
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Writes `evals.csv` and `result.json` into `dir` (the JSON last: its presence marks a
/// finished run).
fn save_run(dir: &Path, o: &Outcome) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("tokens,step,val_loss,train_loss,seconds\n");
    for (tok, step, v, tr, s) in &o.evals {
        writeln!(csv, "{tok},{step},{v:.6},{tr:.6},{s:.3}")?;
    }
    std::fs::write(dir.join("evals.csv"), csv)?;
    let s = &o.spec;
    let json = serde_json::json!({
        "optimizer": s.optimizer,
        "batch": s.batch,
        "lr": s.lr,
        "steps": s.steps,
        "seed": s.seed,
        "warmup": s.warmup,
        "tokens": s.steps * s.batch * 64,
        "best_val_loss": o.best(),
        "final_val_loss": o.last(),
        "seconds": o.seconds,
    });
    let tmp = dir.join("result.json.tmp");
    std::fs::write(&tmp, format!("{json}\n"))?;
    std::fs::rename(tmp, dir.join("result.json"))?;
    Ok(())
}

/// Reads back a finished run.
fn load_run(dir: &Path, spec: &RunSpec) -> Res<Option<Outcome>> {
    let done = dir.join("result.json");
    if !done.is_file() {
        return Ok(None);
    }
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&done)?)?;
    let seconds = result["seconds"]
        .as_f64()
        .ok_or_else(|| format!("{}: no seconds", done.display()))?;
    let csv = std::fs::read_to_string(dir.join("evals.csv"))?;
    let mut evals = Vec::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 5 {
            return Err(format!("{}: bad line {line:?}", dir.display()).into());
        }
        evals.push((
            f[0].parse()?,
            f[1].parse()?,
            f[2].parse()?,
            f[3].parse()?,
            f[4].parse()?,
        ));
    }
    Ok(Some(Outcome {
        spec: spec.clone(),
        evals,
        seconds,
    }))
}

/// A line chart of validation loss against tokens, one line per (optimizer, batch) at its
/// best rate.
fn svg(lines: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, l, r, t, b) = (720.0, 440.0, 70.0, 200.0, 30.0, 50.0);
    let pts = lines.iter().flat_map(|(_, p)| p.iter());
    let xmax = pts.clone().map(|p| p.0).fold(1.0, f64::max);
    let ymin = pts.clone().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let ymax = pts.map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (ymin, ymax) = ((ymin * 10.0).floor() / 10.0, (ymax * 10.0).ceil() / 10.0);
    let sx = |x: f64| l + x / xmax * (w - l - r);
    let sy = |y: f64| t + (ymax - y) / (ymax - ymin).max(1e-9) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"18\" text-anchor=\"middle\">char-GPT on tinyshakespeare: validation loss (best rate per optimizer and batch)</text>",
        (w - r + l) / 2.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>",
        h - b,
        w - r,
        h - b,
        h - b
    );
    for i in 0..=5 {
        let y = ymin + (ymax - ymin) * i as f64 / 5.0;
        let x = xmax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y:.2}</text><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.2}M</text>",
            l - 6.0,
            sy(y) + 4.0,
            sx(x),
            h - b + 16.0,
            x / 1e6
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">tokens</text>",
        (w - r + l) / 2.0,
        h - 10.0
    );
    let colours = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    ];
    for (i, (label, p)) in lines.iter().enumerate() {
        let c = colours[i % colours.len()];
        let d: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            d.join(" ")
        );
        let ly = t + 20.0 * i as f64 + 10.0;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            w - r + 10.0,
            w - r + 30.0,
            w - r + 35.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The grid: two optimizers, batch 12 and 384, three rates each.
fn grid(corpus: &Corpus, out: &Path, steps12: usize, centres: [(&str, f64); 2]) -> Res<()> {
    let mut done = Vec::new();
    for &(opt, centre) in &centres {
        for batch in [12usize, 384] {
            let steps = steps12 * 12 / batch;
            let scaled = centre * (batch as f64 / 12.0).sqrt();
            for f in [0.5, 1.0, 2.0] {
                let lr = (scaled * f * 1e6).round() / 1e6;
                let spec = RunSpec {
                    optimizer: opt.into(),
                    batch,
                    lr,
                    steps,
                    warmup: warmup_for(steps),
                    seed: 42,
                };
                let dir = out.join("runs").join(spec.name());
                let o = match load_run(&dir, &spec)? {
                    Some(o) => {
                        eprintln!("{}: done before ({:.4})", spec.name(), o.best());
                        o
                    }
                    None => {
                        let o = train(corpus, &spec, 10, true)?;
                        save_run(&dir, &o)?;
                        o
                    }
                };
                done.push(o);
            }
        }
    }
    let mut csv = String::from(
        "optimizer,batch,lr,steps,warmup,tokens,best_val_loss,final_val_loss,seconds\n",
    );
    for o in &done {
        let s = &o.spec;
        writeln!(
            csv,
            "{},{},{},{},{},{},{:.4},{:.4},{:.1}",
            s.optimizer,
            s.batch,
            s.lr,
            s.steps,
            s.warmup,
            s.steps * s.batch * 64,
            o.best(),
            o.last(),
            o.seconds
        )?;
    }
    std::fs::write(out.join("results.csv"), csv)?;
    let mut md = format!(
        "# char-GPT on tinyshakespeare: LAMB vs AdamW\n\n{} tokens per run ({} steps at batch 12, {} at batch 384; context 64). Best validation loss (256 fixed windows of the last 10%, measured 10 times per run) per optimizer and batch, at the best of three rates:\n\n| optimizer | batch | best val loss | at lr | other rates (best val loss) |\n|---|---:|---:|---:|---|\n",
        steps12 * 12 * 64,
        steps12,
        steps12 * 12 / 384
    );
    let mut lines = Vec::new();
    for &(opt, _) in &centres {
        for batch in [12usize, 384] {
            let cell: Vec<&Outcome> = done
                .iter()
                .filter(|o| o.spec.optimizer == opt && o.spec.batch == batch)
                .collect();
            let best = cell
                .iter()
                .min_by(|a, b| a.best().total_cmp(&b.best()))
                .ok_or("empty cell")?;
            let others: Vec<String> = cell
                .iter()
                .filter(|o| o.spec.lr != best.spec.lr)
                .map(|o| format!("{}: {:.4}", o.spec.lr, o.best()))
                .collect();
            writeln!(
                md,
                "| {opt} | {batch} | {:.4} | {} | {} |",
                best.best(),
                best.spec.lr,
                others.join(", ")
            )?;
            lines.push((
                format!("{opt} batch {batch} (lr {})", best.spec.lr),
                best.evals.iter().map(|e| (e.0 as f64, e.2)).collect(),
            ));
        }
    }
    md.push_str("\nWall time of every run (2 threads):\n\n| run | steps | seconds | s/step |\n|---|---:|---:|---:|\n");
    for o in &done {
        writeln!(
            md,
            "| {} | {} | {:.0} | {:.3} |",
            o.spec.name(),
            o.spec.steps,
            o.seconds,
            o.seconds / o.spec.steps as f64
        )?;
    }
    std::fs::write(out.join("table.md"), md)?;
    std::fs::write(out.join("curves.svg"), svg(&lines))?;
    eprintln!("wrote {}/table.md, results.csv, curves.svg", out.display());
    Ok(())
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: char_gpt run --optimizer lamb|adamw --batch B --lr X --out DIR [--steps-at-12 N] [--seed S] [--data FILE]\n       char_gpt grid --out DIR [--steps-at-12 N] [--lamb-lr X] [--adamw-lr X] [--data FILE]";
    let cmd = args.first().ok_or(usage)?.clone();
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut it = args[1..].iter();
    while let Some(k) = it.next() {
        let key = k
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected {k:?}\n{usage}"))?;
        let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        flags.insert(key.to_string(), v.clone());
    }
    let known: &[&str] = match cmd.as_str() {
        "run" => &[
            "optimizer",
            "batch",
            "lr",
            "out",
            "steps-at-12",
            "seed",
            "data",
        ],
        "grid" => &["out", "steps-at-12", "data", "lamb-lr", "adamw-lr"],
        other => return Err(format!("unknown command {other:?}\n{usage}").into()),
    };
    if let Some(k) = flags.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("flag --{k} does not apply to `{cmd}`\n{usage}").into());
    }
    let int = |k: &str, default: u64, min: u64| -> Res<u64> {
        match flags.get(k) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(x) if x >= min => Ok(x),
                _ => Err(format!("--{k} {v:?}: expected a whole number >= {min}").into()),
            },
        }
    };
    let num = |k: &str, default: f64| -> Res<f64> {
        match flags.get(k) {
            None => Ok(default),
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(format!("--{k} {v:?}: expected a positive number").into()),
            },
        }
    };
    let data = PathBuf::from(
        flags
            .get("data")
            .map_or("../shared/data/tinyshakespeare.txt", |s| s.as_str()),
    );
    let text = std::fs::read_to_string(&data).map_err(|e| {
        format!(
            "{}: {e} (expected tinyshakespeare.txt; pass --data FILE)",
            data.display()
        )
    })?;
    let corpus = Corpus::new(&text)?;
    let out = PathBuf::from(
        flags
            .get("out")
            .ok_or(format!("--out is required\n{usage}"))?,
    );
    let steps12 = int("steps-at-12", 2048, 32)? as usize;
    if !steps12.is_multiple_of(32) {
        return Err(format!(
            "--steps-at-12 {steps12}: must be a multiple of 32 so that batch 384 sees the same tokens"
        )
        .into());
    }
    match cmd.as_str() {
        "run" => {
            let batch = int("batch", 12, 1)? as usize;
            if !(steps12 * 12).is_multiple_of(batch) {
                return Err(format!(
                    "--batch {batch} does not divide the {} sequences of the budget",
                    steps12 * 12
                )
                .into());
            }
            let steps = steps12 * 12 / batch;
            let spec = RunSpec {
                optimizer: flags
                    .get("optimizer")
                    .ok_or("--optimizer is required")?
                    .clone(),
                batch,
                lr: num("lr", 1e-3)?,
                steps,
                warmup: warmup_for(steps),
                seed: int("seed", 42, 0)?,
            };
            let o = train(&corpus, &spec, 10, true)?;
            save_run(&out, &o)?;
            println!(
                "{}: best val loss {:.4}, final {:.4}, {:.0} s ({:.3} s/step)",
                spec.name(),
                o.best(),
                o.last(),
                o.seconds,
                o.seconds / steps as f64
            );
        }
        "grid" => {
            let centres = [
                ("lamb", num("lamb-lr", 2e-2)?),
                ("adamw", num("adamw-lr", 1e-3)?),
            ];
            grid(&corpus, &out, steps12, centres)?;
        }
        _ => unreachable!("commands checked above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_corpus() -> Corpus {
        let verse = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n";
        Corpus::new(&verse.repeat(60)).unwrap()
    }

    #[test]
    fn encoding_round_trips_and_splits_ninety_ten() {
        let c = tiny_corpus();
        let all: Vec<u32> = c.train.iter().chain(&c.val).copied().collect();
        let text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n".repeat(60);
        let decoded: String = all.iter().map(|&i| c.chars[i as usize]).collect();
        assert_eq!(decoded, text);
        assert_eq!(c.train.len(), text.chars().count() * 9 / 10);
    }

    #[test]
    fn a_saved_run_reads_back_as_finished() {
        let spec = RunSpec {
            optimizer: "adamw".into(),
            batch: 12,
            lr: 1e-3,
            steps: 64,
            warmup: 8,
            seed: 3,
        };
        let o = Outcome {
            spec: spec.clone(),
            evals: vec![(768, 1, 4.1, 4.2, 0.5), (49152, 64, 3.25, 3.3, 12.25)],
            seconds: 12.5,
        };
        let dir = std::env::temp_dir().join(format!("char_gpt_test_{}", std::process::id()));
        assert!(
            load_run(&dir, &spec).unwrap().is_none(),
            "nothing saved yet"
        );
        save_run(&dir, &o).unwrap();
        let back = load_run(&dir, &spec).unwrap().expect("finished run");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((back.evals, back.seconds), (o.evals, o.seconds));
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_a_tenth() {
        let s = RunSpec {
            optimizer: "lamb".into(),
            batch: 12,
            lr: 1e-3,
            steps: 200,
            warmup: 10,
            seed: 0,
        };
        assert!((s.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(199) - 1e-4).abs() < 1e-5);
        assert_eq!(warmup_for(2048), 102);
        assert_eq!(warmup_for(64), 8);
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let c = tiny_corpus();
        let map = VarMap::new();
        let m = Gpt::new(Shape::nano(c.chars.len()), &map, 1).unwrap();
        let (x, y) = windows(&c.train, &[0, 100, 500], 64).unwrap();
        let g = m.loss(&x, &y).unwrap().backward().unwrap();
        for (name, var) in map.data().lock().unwrap().iter() {
            let norm = g.get(var).map(|t| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            assert!(
                norm.is_some_and(|n| n > 0.0 && n.is_finite()),
                "{name}: gradient {norm:?}"
            );
        }
    }

    #[test]
    fn both_optimizers_lower_the_loss_of_a_small_gpt() {
        let c = tiny_corpus();
        for (opt, lr) in [("lamb", 1e-2), ("adamw", 3e-3)] {
            let spec = RunSpec {
                optimizer: opt.into(),
                batch: 8,
                lr,
                steps: 40,
                warmup: 4,
                seed: 1,
            };
            let o = train(&c, &spec, 2, false).unwrap();
            let (first, last) = (o.evals[0].2, o.last());
            assert!(
                last < first && last < (c.chars.len() as f64).ln(),
                "{opt}: validation loss {first} -> {last}"
            );
        }
    }
}
