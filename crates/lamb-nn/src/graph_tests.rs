//! Tests of the general engine: gradient checks of every layer and option against an
//! independent f64 reference that interprets the Keras description with naive loops; model
//! descriptions (Keras JSON files, built-ins, errors); thread-count bit-identity.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::{Model, ModelSpec, NnError};

/// A tensor of the reference: values and per-sample shape.
#[derive(Clone)]
struct T {
    v: Vec<f64>,
    shape: Vec<usize>,
}

fn act64(name: &str, x: f64) -> f64 {
    const A: f64 = 1.673_263_242_354_377_2;
    const S: f64 = 1.050_700_987_355_480_5;
    match name {
        "linear" | "softmax" => x,
        "relu" => x.max(0.0),
        "selu" => {
            if x > 0.0 {
                S * x
            } else {
                S * A * (x.exp() - 1.0)
            }
        }
        "elu" => {
            if x > 0.0 {
                x
            } else {
                x.exp() - 1.0
            }
        }
        "gelu" => 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())),
        "tanh" => x.tanh(),
        "sigmoid" => 1.0 / (1.0 + (-x).exp()),
        other => panic!("reference: activation {other}"),
    }
}

/// Applies a Keras activation to rows of `width` (softmax per row), unless it is the output's
/// softmax (left to the loss).
fn activate(name: &str, v: &mut [f64], width: usize, output: bool) {
    if name == "softmax" {
        if output {
            return;
        }
        for row in v.chunks_mut(width) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|x| (x - m).exp()).sum();
            row.iter_mut().for_each(|x| *x = (*x - m).exp() / s);
        }
    } else {
        v.iter_mut().for_each(|x| *x = act64(name, *x));
    }
}

fn pair(cfg: &Value, key: &str, default: usize) -> usize {
    match cfg.get(key) {
        Some(Value::Array(a)) => a[0].as_u64().unwrap() as usize,
        Some(v) if v.is_u64() => v.as_u64().unwrap() as usize,
        _ => default,
    }
}

/// Output size and leading padding of a window of `k` with stride `s` over `n`, as TF.
fn out_pad(n: usize, k: usize, s: usize, same: bool) -> (usize, usize) {
    if same {
        let o = n.div_ceil(s);
        (o, ((o - 1) * s + k).saturating_sub(n) / 2)
    } else {
        ((n - k) / s + 1, 0)
    }
}

/// Mean loss (softmax cross-entropy plus L2 terms) of `model`'s description with parameters
/// `p` (model order), dropout masks `masks` (by layer name), on `x`; BatchNormalization in
/// training mode (batch statistics).
fn reference_loss(
    model: &Model,
    p: &[Vec<f64>],
    masks: &[(String, Vec<f64>)],
    x: &[f64],
    y: &[u8],
) -> f64 {
    let spec = model.spec.as_ref().unwrap();
    let batch = y.len();
    let mut vals: Vec<(String, T)> = vec![(
        spec.input_name.clone(),
        T {
            v: x.to_vec(),
            shape: spec.input_shape.to_vec(),
        },
    )];
    let mut pi = 0;
    let mut reg = 0.0;
    let n_layers = spec.layers.len();
    for (li, l) in spec.layers.iter().enumerate() {
        let output = li + 1 == n_layers;
        let ins: Vec<T> = l
            .inbound
            .iter()
            .map(|n| vals.iter().find(|(m, _)| m == n).unwrap().1.clone())
            .collect();
        let cfg = &l.config;
        let s_of = |k: &str, d: &str| cfg.get(k).and_then(Value::as_str).unwrap_or(d).to_string();
        let out = match l.class.as_str() {
            "Conv2D" | "Dense" => {
                let bias = cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true);
                let wk = &p[pi];
                let b: Vec<f64> = if bias {
                    p[pi + 1].clone()
                } else {
                    vec![0.0; 1 << 12]
                };
                pi += 1 + bias as usize;
                if let Some(l2) = cfg
                    .get("kernel_regularizer")
                    .and_then(|r| r.get("config"))
                    .and_then(|c| c.get("l2"))
                    .and_then(Value::as_f64)
                {
                    reg += l2 * wk.iter().map(|w| w * w).sum::<f64>();
                }
                let a = s_of("activation", "linear");
                let x = &ins[0];
                if l.class == "Dense" {
                    let inp = x.shape[0];
                    let units = cfg["units"].as_u64().unwrap() as usize;
                    let mut o = vec![0.0; batch * units];
                    for n in 0..batch {
                        for u in 0..units {
                            let mut acc = b[u];
                            for i in 0..inp {
                                acc += x.v[n * inp + i] * wk[i * units + u];
                            }
                            o[n * units + u] = acc;
                        }
                    }
                    activate(&a, &mut o, units, output);
                    T {
                        v: o,
                        shape: vec![units],
                    }
                } else {
                    let (h, w, c) = (x.shape[0], x.shape[1], x.shape[2]);
                    let (k, s) = (pair(cfg, "kernel_size", 0), pair(cfg, "strides", 1));
                    let same = s_of("padding", "valid") == "same";
                    let f = cfg["filters"].as_u64().unwrap() as usize;
                    let (ho, pt) = out_pad(h, k, s, same);
                    let (wo, pl) = out_pad(w, k, s, same);
                    let mut o = vec![0.0; batch * ho * wo * f];
                    for n in 0..batch {
                        for oh in 0..ho {
                            for ow in 0..wo {
                                for fo in 0..f {
                                    let mut acc = b[fo];
                                    for kh in 0..k {
                                        for kw in 0..k {
                                            let ih = (oh * s + kh) as isize - pt as isize;
                                            let iw = (ow * s + kw) as isize - pl as isize;
                                            if ih < 0
                                                || iw < 0
                                                || ih >= h as isize
                                                || iw >= w as isize
                                            {
                                                continue;
                                            }
                                            for ci in 0..c {
                                                acc += x.v[((n * h + ih as usize) * w
                                                    + iw as usize)
                                                    * c
                                                    + ci]
                                                    * wk[((kh * k + kw) * c + ci) * f + fo];
                                            }
                                        }
                                    }
                                    o[((n * ho + oh) * wo + ow) * f + fo] = acc;
                                }
                            }
                        }
                    }
                    activate(&a, &mut o, f, output);
                    T {
                        v: o,
                        shape: vec![ho, wo, f],
                    }
                }
            }
            "MaxPooling2D" | "AveragePooling2D" => {
                let x = &ins[0];
                let (h, w, c) = (x.shape[0], x.shape[1], x.shape[2]);
                let k = pair(cfg, "pool_size", 2);
                let s = pair(cfg, "strides", k);
                let same = s_of("padding", "valid") == "same";
                let (ho, pt) = out_pad(h, k, s, same);
                let (wo, pl) = out_pad(w, k, s, same);
                let max = l.class == "MaxPooling2D";
                let mut o = vec![0.0; batch * ho * wo * c];
                for n in 0..batch {
                    for oh in 0..ho {
                        for ow in 0..wo {
                            for ch in 0..c {
                                let (mut acc, mut cnt) =
                                    (if max { f64::NEG_INFINITY } else { 0.0 }, 0);
                                for kh in 0..k {
                                    for kw in 0..k {
                                        let ih = (oh * s + kh) as isize - pt as isize;
                                        let iw = (ow * s + kw) as isize - pl as isize;
                                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize
                                        {
                                            continue;
                                        }
                                        let v =
                                            x.v[((n * h + ih as usize) * w + iw as usize) * c + ch];
                                        acc = if max { acc.max(v) } else { acc + v };
                                        cnt += 1;
                                    }
                                }
                                o[((n * ho + oh) * wo + ow) * c + ch] =
                                    if max { acc } else { acc / cnt as f64 };
                            }
                        }
                    }
                }
                T {
                    v: o,
                    shape: vec![ho, wo, c],
                }
            }
            "GlobalAveragePooling2D" => {
                let x = &ins[0];
                let (hw, c) = (x.shape[0] * x.shape[1], x.shape[2]);
                let mut o = vec![0.0; batch * c];
                for n in 0..batch {
                    for px in 0..hw {
                        for ch in 0..c {
                            o[n * c + ch] += x.v[(n * hw + px) * c + ch] / hw as f64;
                        }
                    }
                }
                T {
                    v: o,
                    shape: vec![c],
                }
            }
            "Flatten" => T {
                v: ins[0].v.clone(),
                shape: vec![ins[0].shape.iter().product()],
            },
            "Activation" => {
                let mut t = ins[0].clone();
                let width = *t.shape.last().unwrap();
                activate(&s_of("activation", "linear"), &mut t.v, width, output);
                t
            }
            "Dropout" => {
                let mask = &masks.iter().find(|(n, _)| *n == l.name).unwrap().1;
                let mut t = ins[0].clone();
                t.v.iter_mut().zip(mask).for_each(|(v, m)| *v *= m);
                t
            }
            "Add" => {
                let mut t = ins[0].clone();
                for other in &ins[1..] {
                    t.v.iter_mut().zip(&other.v).for_each(|(a, b)| *a += b);
                }
                t
            }
            "BatchNormalization" => {
                let (gamma, beta) = (&p[pi], &p[pi + 1]);
                pi += 2;
                let eps = cfg.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3);
                let mut t = ins[0].clone();
                let c = *t.shape.last().unwrap();
                let rows = t.v.len() / c;
                for ch in 0..c {
                    let mean: f64 = (0..rows).map(|r| t.v[r * c + ch]).sum::<f64>() / rows as f64;
                    let var: f64 = (0..rows)
                        .map(|r| (t.v[r * c + ch] - mean).powi(2))
                        .sum::<f64>()
                        / rows as f64;
                    for r in 0..rows {
                        let v = &mut t.v[r * c + ch];
                        *v = (*v - mean) / (var + eps).sqrt() * gamma[ch] + beta[ch];
                    }
                }
                t
            }
            other => panic!("reference: layer {other}"),
        };
        vals.push((l.name.clone(), out));
    }
    assert_eq!(pi, p.len(), "reference consumed every parameter");
    let z = &vals.last().unwrap().1;
    let c = z.shape[0];
    let mut loss = 0.0;
    for (n, &label) in y.iter().enumerate() {
        let z = &z.v[n * c..(n + 1) * c];
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss += lse - z[label as usize];
    }
    loss / batch as f64 + reg
}

fn close(analytic: f64, numeric: f64) -> bool {
    (analytic - numeric).abs() <= 3e-3 * analytic.abs().max(numeric.abs()) + 3e-5
}

/// Checks the loss, every parameter gradient and the input gradient of the general-engine
/// model `spec` on a random batch against the f64 reference.
fn check(spec: &ModelSpec, batch: usize, seed: u64) {
    let mut model = spec.build(seed).unwrap();
    assert!(model.graph.is_some(), "the general engine runs this model");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Non-trivial biases, gammas and betas.
    let current: Vec<(String, Vec<f32>)> = model
        .params()
        .into_iter()
        .map(|(n, _, v)| (n, v.to_vec()))
        .collect();
    for (name, v) in current {
        if name.ends_with("/bias") || name.ends_with("/beta") || name.ends_with("/gamma") {
            let base = if name.ends_with("/gamma") { 1.0 } else { 0.0 };
            let nv: Vec<f32> = v.iter().map(|_| base + rng.gen_range(-0.3..0.3)).collect();
            model.set_param(&name, &nv).unwrap();
        }
    }
    let in_len = model.in_len();
    let x: Vec<f32> = (0..batch * in_len)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let y: Vec<u8> = (0..batch)
        .map(|_| rng.gen_range(0..model.classes as u8))
        .collect();
    model.graph.as_mut().unwrap().input_grad = Some(Vec::new());
    model.ensure_backward(batch);
    model.ws.x[..x.len()].copy_from_slice(&x);
    model.ws.y[..batch].copy_from_slice(&y);
    model.forward(batch, true);
    let (loss_sum, _) = model.loss_and_grad(batch);
    model.backward(batch);
    let g = model.graph.as_ref().unwrap();
    let masks: Vec<(String, Vec<f64>)> = g
        .nodes
        .iter()
        .filter_map(|n| {
            n.layer
                .test_mask()
                .map(|m| (n.name.clone(), m.iter().map(|v| *v as f64).collect()))
        })
        .collect();
    let p64: Vec<Vec<f64>> = model
        .params()
        .iter()
        .map(|p| p.2.iter().map(|&v| v as f64).collect())
        .collect();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let reference = reference_loss(&model, &p64, &masks, &x64, &y);
    let engine = loss_sum / batch as f64;
    assert!(
        (engine - reference).abs() < 1e-5 * reference.abs().max(1.0),
        "loss: engine {engine} vs reference {reference}"
    );
    let eps = 1e-6;
    let names = model.param_names();
    let grads: Vec<Vec<f32>> = model.grads().into_iter().map(|g| g.1.to_vec()).collect();
    for (t, g) in grads.iter().enumerate() {
        for (i, &a) in g.iter().enumerate() {
            let mut pp = p64.clone();
            pp[t][i] += eps;
            let up = reference_loss(&model, &pp, &masks, &x64, &y);
            pp[t][i] -= 2.0 * eps;
            let down = reference_loss(&model, &pp, &masks, &x64, &y);
            let num = (up - down) / (2.0 * eps);
            assert!(
                close(a as f64, num),
                "{}[{i}]: analytic {a} vs numeric {num}",
                names[t]
            );
        }
    }
    let dx = model.graph.as_ref().unwrap().input_grad.clone().unwrap();
    for i in 0..x.len() {
        let mut xx = x64.clone();
        xx[i] += eps;
        let up = reference_loss(&model, &p64, &masks, &xx, &y);
        xx[i] -= 2.0 * eps;
        let down = reference_loss(&model, &p64, &masks, &xx, &y);
        let num = (up - down) / (2.0 * eps);
        assert!(
            close(dx[i] as f64, num),
            "input[{i}]: analytic {} vs numeric {num}",
            dx[i]
        );
    }
}

fn conv(f: usize, k: usize, s: usize, padding: &str, act: &str) -> Value {
    json!({"filters": f, "kernel_size": [k, k], "strides": [s, s], "padding": padding, "activation": act})
}

#[test]
fn conv_stride2_same_no_bias_l2_gelu_pools_global_average() {
    let mut s = ModelSpec::input([7, 6, 2]);
    let mut c = conv(3, 3, 2, "same", "gelu");
    c["use_bias"] = json!(false);
    c["kernel_regularizer"] = json!({"class_name": "L2", "config": {"l2": 0.01}});
    c["kernel_initializer"] = json!({"class_name": "HeNormal", "config": {}});
    let a = s.layer("Conv2D", "conv2d", c, &["input_1"]);
    let a = s.layer(
        "AveragePooling2D",
        "avg",
        json!({"pool_size": [2, 2], "strides": [1, 1], "padding": "same"}),
        &[&a],
    );
    let a = s.layer("Conv2D", "conv2d_1", conv(4, 2, 1, "valid", "elu"), &[&a]);
    let a = s.layer(
        "MaxPooling2D",
        "max",
        json!({"pool_size": [2, 2], "strides": [1, 1], "padding": "same"}),
        &[&a],
    );
    let a = s.layer("GlobalAveragePooling2D", "gap", json!({}), &[&a]);
    s.layer(
        "Dense",
        "dense",
        json!({"units": 3, "activation": "softmax"}),
        &[&a],
    );
    check(&s, 3, 21);
}

#[test]
fn same_padding_on_the_direct_and_winograd_kernels() {
    // 16 filters and `same` padding: on AVX-512 CPUs the zero-padded input runs on the direct
    // kernels (3 channels), Winograd (3x3 stride 1, 16 channels, even output) and the direct
    // stride-2 kernels.
    let mut s = ModelSpec::input([4, 4, 3]);
    let a = s.layer("Conv2D", "c", conv(16, 3, 1, "same", "relu"), &["input_1"]);
    let a = s.layer("Conv2D", "c1", conv(16, 3, 1, "same", "linear"), &[&a]);
    let a = s.layer("Conv2D", "c2", conv(16, 3, 2, "same", "selu"), &[&a]);
    let a = s.layer("Flatten", "f", json!({}), &[&a]);
    s.layer(
        "Dense",
        "dense",
        json!({"units": 3, "activation": "softmax"}),
        &[&a],
    );
    check(&s, 2, 25);
}

#[test]
fn residual_block_with_batch_norm_projection_and_dropout() {
    let mut s = ModelSpec::input([6, 6, 3]);
    let x = s.layer(
        "Conv2D",
        "conv2d",
        conv(4, 3, 1, "same", "linear"),
        &["input_1"],
    );
    let x = s.layer("BatchNormalization", "bn", json!({}), &[&x]);
    let x = s.layer("Activation", "act", json!({"activation": "relu"}), &[&x]);
    let y = s.layer("Conv2D", "conv2d_1", conv(5, 3, 2, "same", "linear"), &[&x]);
    let y = s.layer(
        "BatchNormalization",
        "bn_1",
        json!({"momentum": 0.9}),
        &[&y],
    );
    let p = s.layer("Conv2D", "proj", conv(5, 1, 2, "same", "linear"), &[&x]);
    let z = s.layer("Add", "add", json!({}), &[&p, &y]);
    let z = s.layer("Activation", "act_1", json!({"activation": "tanh"}), &[&z]);
    let z = s.layer("Dropout", "drop", json!({"rate": 0.3}), &[&z]);
    let z = s.layer(
        "MaxPooling2D",
        "max",
        json!({"pool_size": 3, "strides": 2}),
        &[&z],
    );
    let z = s.layer("Flatten", "flat", json!({}), &[&z]);
    let z = s.layer("Dense", "dense", json!({"units": 4}), &[&z]);
    s.layer("Activation", "out", json!({"activation": "softmax"}), &[&z]);
    check(&s, 4, 22);
}

#[test]
fn dense_stack_with_every_activation_and_flat_batch_norm() {
    let mut s = ModelSpec::input([2, 2, 3]);
    let mut a = s.layer("Flatten", "flat", json!({}), &["input_1"]);
    for (i, act) in [
        "selu", "sigmoid", "relu", "softmax", "elu", "gelu", "tanh", "linear",
    ]
    .iter()
    .enumerate()
    {
        a = s.layer(
            "Dense",
            &format!("d{i}"),
            json!({"units": 5, "activation": act}),
            &[&a],
        );
    }
    let a = s.layer("BatchNormalization", "bn", json!({"epsilon": 0.01}), &[&a]);
    // The same input read twice by one Add, and a layer read by two others.
    let b = s.layer("Add", "add", json!({}), &[&a, &a]);
    let c = s.layer("Add", "add_1", json!({}), &[&b, &a]);
    s.layer("Dense", "dense", json!({"units": 3, "activation": "softmax", "kernel_regularizer": {"class_name": "L2", "config": {"l2": 0.05}}}), &[&c]);
    check(&s, 5, 23);
}

#[test]
fn input_read_by_two_layers() {
    let mut s = ModelSpec::input([4, 4, 2]);
    let a = s.layer("Conv2D", "c1", conv(2, 3, 1, "same", "relu"), &["input_1"]);
    let b = s.layer(
        "AveragePooling2D",
        "p",
        json!({"pool_size": 1}),
        &["input_1"],
    );
    let a = s.layer("Add", "add", json!({}), &[&a, &b]);
    let a = s.layer("Flatten", "flat", json!({}), &[&a]);
    s.layer(
        "Dense",
        "dense",
        json!({"units": 3, "activation": "softmax"}),
        &[&a],
    );
    check(&s, 2, 24);
}

fn shared(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models")
        .join(name)
}

#[test]
fn resnet20_built_in_equals_the_keras_export() {
    let built = ModelSpec::resnet20();
    let m = built.build(1).unwrap();
    assert_eq!(m.total_param_count(), 274_442);
    assert_eq!(m.param_count(), 273_066);
    let summary = m.summary();
    assert!(summary.contains("Total params: 274,442"), "{summary}");
    assert!(summary.contains("Non-trainable params: 1,376"), "{summary}");
    // Keras' functional table: the input row, connections, long cells wrapped to the width.
    assert!(summary.contains(" input_1 (InputLayer)"), "{summary}");
    assert!(
        summary.contains("['batch_normalization_18[0][0]']") || summary.contains("'add_8[0][0]'")
    );
    let rule = summary.lines().nth(1).unwrap().chars().count();
    assert!(
        summary.lines().all(|l| l.chars().count() <= rule),
        "{summary}"
    );
    assert!(
        summary
            .lines()
            .any(|l| l.trim_start().starts_with("ormalization)")),
        "{summary}"
    );
    let path = shared("resnet20.json");
    if !path.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing",
            path.display()
        );
        eprintln!("skipping the file comparison: {} not found", path.display());
        return;
    }
    let file = ModelSpec::from_file(&path).unwrap();
    let a = file.build(1).unwrap();
    assert_eq!(a.tensors().len(), m.tensors().len());
    for ((n1, s1, v1), (n2, s2, v2)) in a.tensors().iter().zip(m.tensors()) {
        assert_eq!((n1, s1), (&n2, &s2));
        // Same seed, same order of draws: the same initial values.
        assert_eq!(v1, &v2, "{n1}");
    }
    // The built-in's configs carry every option the export sets that the engine reads.
    let (fa, fb) = (
        file.build(0).unwrap().summary(),
        built.build(0).unwrap().summary(),
    );
    assert_eq!(fa, fb);
    // The description round-trips through Keras JSON.
    let again = ModelSpec::from_keras_json(&built.to_keras_json()).unwrap();
    assert_eq!(again.build(1).unwrap().summary(), m.summary());
}

#[test]
fn seed_cnn_file_runs_on_the_fused_engine_with_classic_weights() {
    let path = shared("seed_cnn.json");
    if !path.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing",
            path.display()
        );
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let m = ModelSpec::from_file(&path).unwrap().build(7).unwrap();
    assert!(m.graph.is_none(), "the seed CNN runs on the fused engine");
    let classic = crate::classic_cnn(crate::Activation::Relu, 7).unwrap();
    assert_eq!(m.flat_params(), classic.flat_params());
    assert_eq!(m.summary(), classic.summary());
    let built = ModelSpec::seed_cnn("selu").build(3).unwrap();
    assert!(built.graph.is_none());
    assert_eq!(
        built.flat_params(),
        crate::classic_cnn(crate::Activation::Selu, 3)
            .unwrap()
            .flat_params()
    );
}

fn err_of(spec: Result<ModelSpec, NnError>) -> String {
    match spec.and_then(|s| s.build(0)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn functional(layers: Value, input: &str, output: &str) -> String {
    json!({"class_name": "Functional", "config": {"name": "m", "layers": layers,
        "input_layers": [[input, 0, 0]], "output_layers": [[output, 0, 0]]}})
    .to_string()
}

fn input_layer(name: &str) -> Value {
    json!({"class_name": "InputLayer", "name": name, "config": {"batch_input_shape": [null, 8, 8, 3], "name": name}, "inbound_nodes": []})
}

fn node(class: &str, name: &str, cfg: Value, ins: &[&str]) -> Value {
    let inb: Vec<Value> = ins.iter().map(|n| json!([n, 0, 0, {}])).collect();
    json!({"class_name": class, "name": name, "config": cfg, "inbound_nodes": [inb]})
}

#[test]
fn bad_descriptions_are_refused_naming_the_layer() {
    let parse = |t: String| ModelSpec::from_keras_json(&t);
    let dense = json!({"units": 10, "activation": "softmax"});
    // Unknown layer.
    let e = err_of(parse(functional(
        json!([
            input_layer("in"),
            node("LSTM", "lstm", json!({}), &["in"]),
            node("Flatten", "f", json!({}), &["lstm"]),
            node("Dense", "d", dense.clone(), &["f"])
        ]),
        "in",
        "d",
    )));
    assert!(
        e.contains("`lstm` (LSTM)") && e.contains("unknown layer") && e.contains("Conv2D"),
        "{e}"
    );
    // Unsupported option.
    let e = err_of(parse(functional(
        json!([
            input_layer("in"),
            node(
                "Conv2D",
                "c",
                json!({"filters": 2, "kernel_size": [3, 3], "dilation_rate": [2, 2]}),
                &["in"]
            ),
            node("Flatten", "f", json!({}), &["c"]),
            node("Dense", "d", dense.clone(), &["f"])
        ]),
        "in",
        "d",
    )));
    assert!(
        e.contains("`c` (Conv2D)") && e.contains("dilation_rate"),
        "{e}"
    );
    // Cycle.
    let e = err_of(parse(functional(
        json!([
            input_layer("in"),
            node("Add", "a", json!({}), &["in", "b"]),
            node("Activation", "b", json!({"activation": "relu"}), &["a"]),
            node("Flatten", "f", json!({}), &["b"]),
            node("Dense", "d", dense.clone(), &["f"])
        ]),
        "in",
        "d",
    )));
    assert!(e.contains("cycle"), "{e}");
    // Two inputs.
    let e = err_of(parse(functional(
        json!([
            input_layer("in"),
            input_layer("in2"),
            node("Flatten", "f", json!({}), &["in"]),
            node("Dense", "d", dense.clone(), &["f"])
        ]),
        "in",
        "d",
    )));
    assert!(e.contains("`in2`") && e.contains("one input"), "{e}");
    // Shapes that do not fit (Add of different shapes, a pool larger than its input, Dense
    // on an image).
    let e = err_of(parse(functional(
        json!([
            input_layer("in"),
            node(
                "Conv2D",
                "c",
                json!({"filters": 4, "kernel_size": 3}),
                &["in"]
            ),
            node("Add", "a", json!({}), &["in", "c"]),
            node("Flatten", "f", json!({}), &["a"]),
            node("Dense", "d", dense.clone(), &["f"])
        ]),
        "in",
        "d",
    )));
    assert!(
        e.contains("`a` (Add)") && e.contains("different shapes"),
        "{e}"
    );
    let e = err_of(parse(functional(
        json!([
            input_layer("in"),
            node("MaxPooling2D", "p", json!({"pool_size": [9, 9]}), &["in"]),
            node("Flatten", "f", json!({}), &["p"]),
            node("Dense", "d", dense.clone(), &["f"])
        ]),
        "in",
        "d",
    )));
    assert!(
        e.contains("`p` (MaxPooling2D)") && e.contains("larger than its input"),
        "{e}"
    );
    let e = err_of(parse(functional(
        json!([
            input_layer("in"),
            node("Dense", "d", dense.clone(), &["in"])
        ]),
        "in",
        "d",
    )));
    assert!(e.contains("`d` (Dense)") && e.contains("Flatten"), "{e}");
    // Shared layer.
    let mut twice = node("Activation", "r", json!({"activation": "relu"}), &["in"]);
    twice["inbound_nodes"] = json!([[["in", 0, 0, {}]], [["in", 0, 0, {}]]]);
    let e = err_of(parse(functional(
        json!([input_layer("in"), twice]),
        "in",
        "r",
    )));
    assert!(e.contains("shared layers"), "{e}");
    // Unknown initialiser, by name.
    let e = err_of(parse(functional(
        json!([
            input_layer("in"),
            node("Flatten", "f", json!({}), &["in"]),
            node(
                "Dense",
                "d",
                json!({"units": 3, "kernel_initializer": {"class_name": "Orthogonal"}}),
                &["f"]
            )
        ]),
        "in",
        "d",
    )));
    assert!(e.contains("Orthogonal"), "{e}");
    // Not JSON.
    assert!(ModelSpec::from_keras_json("{").is_err());
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // A small residual network with BatchNormalization and dropout: weights after three
    // training steps, bit for bit, on 1, 2 and 3 threads.
    let mut s = ModelSpec::input([12, 12, 3]);
    let x = s.layer(
        "Conv2D",
        "c",
        conv(16, 3, 1, "same", "linear"),
        &["input_1"],
    );
    let x = s.layer("BatchNormalization", "bn", json!({}), &[&x]);
    let x = s.layer("Activation", "r", json!({"activation": "relu"}), &[&x]);
    let y = s.layer("Conv2D", "c1", conv(32, 3, 2, "same", "relu"), &[&x]);
    let p = s.layer("Conv2D", "p", conv(32, 1, 2, "same", "linear"), &[&x]);
    let z = s.layer("Add", "a", json!({}), &[&p, &y]);
    let z = s.layer("Dropout", "d", json!({"rate": 0.2}), &[&z]);
    let z = s.layer("GlobalAveragePooling2D", "g", json!({}), &[&z]);
    s.layer(
        "Dense",
        "out",
        json!({"units": 10, "activation": "softmax"}),
        &[&z],
    );
    let run = |threads: usize| -> Vec<u32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut m = s.build(5).unwrap();
            let mut opt = lamb_optim::build(&lamb_optim::OptimizerSpec::new(
                lamb_optim::OptimizerKind::Adam,
            ))
            .unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            for _ in 0..3 {
                let x: Vec<f32> = (0..23 * 432).map(|_| rng.gen_range(0.0..1.0)).collect();
                let y: Vec<u8> = (0..23).map(|_| rng.gen_range(0..10)).collect();
                m.train_step(&x, &y, opt.as_mut()).unwrap();
            }
            m.tensors()
                .iter()
                .flat_map(|t| t.2.iter().map(|v| v.to_bits()))
                .collect()
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn resnet20_is_bit_identical_on_1_2_and_3_threads() {
    let spec = ModelSpec::resnet20();
    let run = |threads: usize| -> Vec<u32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut m = spec.build(3).unwrap();
            let mut opt = lamb_optim::build(&lamb_optim::OptimizerSpec::new(
                lamb_optim::OptimizerKind::Lamb,
            ))
            .unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            for _ in 0..2 {
                let x: Vec<f32> = (0..11 * 3072).map(|_| rng.gen_range(0.0..1.0)).collect();
                let y: Vec<u8> = (0..11).map(|_| rng.gen_range(0..10)).collect();
                m.train_step(&x, &y, opt.as_mut()).unwrap();
            }
            m.tensors()
                .iter()
                .flat_map(|t| t.2.iter().map(|v| v.to_bits()))
                .collect()
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn batch_norm_state_is_saved_and_loaded_with_the_description() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut s = ModelSpec::input([4, 4, 2]);
    let x = s.layer("BatchNormalization", "bn", json!({}), &["input_1"]);
    let x = s.layer("Flatten", "f", json!({}), &[&x]);
    s.layer(
        "Dense",
        "d",
        json!({"units": 2, "activation": "softmax"}),
        &[&x],
    );
    let mut m = s.build(1).unwrap();
    let mut opt = lamb_optim::build(&lamb_optim::OptimizerSpec::new(
        lamb_optim::OptimizerKind::Adam,
    ))
    .unwrap();
    let x: Vec<f32> = (0..3 * 32).map(|i| (i % 7) as f32).collect();
    m.train_step(&x, &[0, 1, 0], opt.as_mut()).unwrap();
    let names: Vec<String> = m.state().into_iter().map(|t| t.0).collect();
    assert_eq!(names, ["bn/moving_mean", "bn/moving_variance"]);
    assert!(
        m.state()[0].2.iter().any(|v| *v != 0.0),
        "training moved the moving mean"
    );
    assert!(
        !m.param_names().iter().any(|n| n.contains("moving")),
        "state is no parameter"
    );
    m.save_safetensors(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let desc = meta.metadata().as_ref().unwrap()["keras_model"].clone();
    let mut back = ModelSpec::from_keras_json(&desc).unwrap().build(2).unwrap();
    back.load_safetensors(&path).unwrap();
    assert_eq!(back.tensors(), m.tensors());
}

/// A residual block whose BatchNormalization and Add each feed only a ReLU `Activation` (both
/// absorbed by the general engine), a projection shortcut and a second, shared ReLU output.
fn relu_residual_block() -> ModelSpec {
    let mut s = ModelSpec::input([8, 8, 3]);
    let x = s.layer(
        "Conv2D",
        "c",
        conv(16, 3, 1, "same", "linear"),
        &["input_1"],
    );
    let x = s.layer("BatchNormalization", "bn", json!({}), &[&x]);
    let x = s.layer("Activation", "r", json!({"activation": "relu"}), &[&x]);
    let y = s.layer("Conv2D", "c1", conv(16, 3, 2, "same", "linear"), &[&x]);
    let y = s.layer("BatchNormalization", "bn_1", json!({}), &[&y]);
    let p = s.layer("Conv2D", "p", conv(16, 1, 2, "same", "linear"), &[&x]);
    let z = s.layer("Add", "a", json!({}), &[&p, &y]);
    let z = s.layer("Activation", "r_1", json!({"activation": "relu"}), &[&z]);
    let z = s.layer("GlobalAveragePooling2D", "g", json!({}), &[&z]);
    s.layer(
        "Dense",
        "out",
        json!({"units": 4, "activation": "softmax"}),
        &[&z],
    );
    s
}

/// Bits of every tensor and of the last logits after `steps` LAMB steps on random batches of
/// 5 images, the model built fused or not; with the number of absorbed activations.
fn trained_bits(spec: &ModelSpec, fuse: bool, steps: usize) -> (Vec<u32>, usize) {
    let mut m = if fuse {
        spec.build(7).unwrap()
    } else {
        spec.build_unfused(7).unwrap()
    };
    let absorbed = m.graph.as_ref().unwrap().absorbed_count();
    let mut opt = lamb_optim::build(&lamb_optim::OptimizerSpec::new(
        lamb_optim::OptimizerKind::Lamb,
    ))
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let in_len = m.in_len();
    for _ in 0..steps {
        let x: Vec<f32> = (0..5 * in_len).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let y: Vec<u8> = (0..5).map(|_| rng.gen_range(0..4)).collect();
        m.train_step(&x, &y, opt.as_mut()).unwrap();
    }
    let mut bits: Vec<u32> = m
        .tensors()
        .iter()
        .flat_map(|t| t.2.iter().map(|v| v.to_bits()))
        .collect();
    bits.extend(
        m.graph
            .as_ref()
            .unwrap()
            .logits(5)
            .iter()
            .map(|v| v.to_bits()),
    );
    (bits, absorbed)
}

#[test]
fn relu_absorbed_into_batch_norm_and_add_gives_the_same_bits() {
    let spec = relu_residual_block();
    let (fused, absorbed) = trained_bits(&spec, true, 3);
    let (plain, none) = trained_bits(&spec, false, 3);
    assert_eq!(
        (absorbed, none),
        (2, 0),
        "both ReLUs absorbed, none unfused"
    );
    assert_eq!(fused, plain, "fused and unfused differ");
    // ResNet-20: all 19 ReLUs (9 Add, 10 BatchNormalization) absorbed, same bits.
    let resnet = ModelSpec::resnet20();
    let (fused, absorbed) = trained_bits(&resnet, true, 1);
    let (plain, _) = trained_bits(&resnet, false, 1);
    assert_eq!(absorbed, 19);
    assert_eq!(fused, plain, "ResNet-20 fused and unfused differ");
}

#[test]
fn a_relu_is_not_absorbed_into_a_layer_that_another_layer_also_reads() {
    // bn is read by the ReLU and by the Add: the ReLU must stay a node of its own (absorbing it
    // would hand the Add rectified values). Same bits as the unfused build, nothing absorbed.
    let mut s = ModelSpec::input([6, 6, 3]);
    let x = s.layer("Conv2D", "c", conv(8, 3, 1, "same", "linear"), &["input_1"]);
    let b = s.layer("BatchNormalization", "bn", json!({}), &[&x]);
    let r = s.layer("Activation", "r", json!({"activation": "relu"}), &[&b]);
    let z = s.layer("Add", "a", json!({}), &[&b, &r]);
    let z = s.layer("GlobalAveragePooling2D", "g", json!({}), &[&z]);
    s.layer(
        "Dense",
        "out",
        json!({"units": 4, "activation": "softmax"}),
        &[&z],
    );
    let (fused, absorbed) = trained_bits(&s, true, 3);
    let (plain, _) = trained_bits(&s, false, 3);
    assert_eq!(absorbed, 0, "a ReLU beside another reader was absorbed");
    assert_eq!(fused, plain);
    check(&s, 3, 33);
}

#[test]
fn relu_residual_block_gradients() {
    // Gradients through the absorbed ReLUs against the f64 reference.
    check(&relu_residual_block(), 3, 31);
}

#[test]
fn evaluation_loss_includes_the_l2_regularisation_as_keras_reports_it() {
    let spec = |l2: Option<f64>| {
        let mut s = ModelSpec::input([6, 6, 3]);
        let mut c = conv(4, 3, 1, "same", "relu");
        if let Some(l2) = l2 {
            c["kernel_regularizer"] = json!({"class_name": "L2", "config": {"l2": l2}});
        }
        let a = s.layer("Conv2D", "conv2d", c, &["input_1"]);
        let a = s.layer("Flatten", "flat", json!({}), &[&a]);
        s.layer(
            "Dense",
            "dense",
            json!({"units": 3, "activation": "softmax"}),
            &[&a],
        );
        s
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n = 20;
    let mut images = vec![0u8; n * 6 * 6 * 3];
    rng.fill(&mut images[..]);
    let data = lamb_data::Dataset {
        labels: (0..n).map(|i| (i % 3) as u8).collect(),
        images,
        height: 6,
        width: 6,
        channels: 3,
        class_names: vec![],
    };
    let (mut with, mut without) = (
        spec(Some(0.01)).build(3).unwrap(),
        spec(None).build(3).unwrap(),
    );
    assert_eq!(with.params(), without.params(), "same seed, same weights");
    let sum_sq: f64 = with
        .params()
        .iter()
        .filter(|(name, ..)| name == "conv2d/kernel")
        .flat_map(|(_, _, v)| v.iter().map(|&x| x as f64 * x as f64))
        .sum();
    let (a, b) = (
        with.evaluate(&data, 7).unwrap(),
        without.evaluate(&data, 7).unwrap(),
    );
    assert_eq!(a.correct, b.correct);
    let expected = 0.01 * sum_sq;
    assert!(
        expected > 1e-4,
        "the check needs a visible penalty: {expected}"
    );
    assert!(
        ((a.loss - b.loss) - expected).abs() < 1e-6 * expected.max(1.0),
        "evaluation losses {} and {} differ by {}, expected the L2 term {expected}",
        a.loss,
        b.loss,
        a.loss - b.loss
    );
}
