//! Gradient checks: the engine's analytic gradients (parameters and input) against central
//! differences of an independent f64 reference forward pass written with naive loops.

use crate::model::Kind;
use crate::{Activation, Model, Padding, Sequential};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ALPHA: f64 = 1.673_263_242_354_377_2;
const SCALE: f64 = 1.050_700_987_355_480_5;

fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu => x.max(0.0),
        Activation::Selu => {
            if x > 0.0 {
                SCALE * x
            } else {
                SCALE * ALPHA * (x.exp() - 1.0)
            }
        }
        Activation::Linear | Activation::Softmax => x,
    }
}

/// Mean softmax cross-entropy of the model with parameters `p` (model order) on `x`, in f64.
fn reference_loss(model: &Model, p: &[Vec<f64>], x: &[f64], y: &[u8]) -> f64 {
    let batch = y.len();
    let mut cur: Vec<f64> = x.to_vec();
    let mut shape = model.input_shape.to_vec();
    let mut pi = 0;
    for l in &model.layers {
        match &l.kind {
            Kind::Conv {
                g,
                filters,
                act: a,
                padding,
            } => {
                let (h, w, c, k, s) = (shape[0], shape[1], shape[2], g.k, g.s);
                let (ho, wo, pt, pl) = match padding {
                    Padding::Valid => ((h - k) / s + 1, (w - k) / s + 1, 0, 0),
                    Padding::Same => {
                        let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
                        let th = ((ho - 1) * s + k).saturating_sub(h);
                        let tw = ((wo - 1) * s + k).saturating_sub(w);
                        (ho, wo, th / 2, tw / 2)
                    }
                };
                let f = *filters;
                let (wk, b) = (&p[pi], &p[pi + 1]);
                pi += 2;
                let mut out = vec![0.0; batch * ho * wo * f];
                for n in 0..batch {
                    for oh in 0..ho {
                        for ow in 0..wo {
                            for o in 0..f {
                                let mut acc = b[o];
                                for kh in 0..k {
                                    for kw in 0..k {
                                        let ih = (oh * s + kh) as isize - pt as isize;
                                        let iw = (ow * s + kw) as isize - pl as isize;
                                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize
                                        {
                                            continue;
                                        }
                                        for ci in 0..c {
                                            let xv = cur[((n * h + ih as usize) * w + iw as usize)
                                                * c
                                                + ci];
                                            acc += xv * wk[((kh * k + kw) * c + ci) * f + o];
                                        }
                                    }
                                }
                                out[((n * ho + oh) * wo + ow) * f + o] = act(*a, acc);
                            }
                        }
                    }
                }
                cur = out;
                shape = vec![ho, wo, f];
            }
            Kind::Pool { g } => {
                let (h, w, c, q) = (shape[0], shape[1], shape[2], g.p);
                let (ho, wo) = (h / q, w / q);
                let mut out = vec![f64::NEG_INFINITY; batch * ho * wo * c];
                for n in 0..batch {
                    for oh in 0..ho {
                        for ow in 0..wo {
                            for ci in 0..c {
                                let o = &mut out[((n * ho + oh) * wo + ow) * c + ci];
                                for ph in 0..q {
                                    for pw in 0..q {
                                        *o = o.max(
                                            cur[((n * h + oh * q + ph) * w + ow * q + pw) * c + ci],
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
                cur = out;
                shape = vec![ho, wo, c];
            }
            Kind::Flatten => shape = vec![shape.iter().product()],
            Kind::Dense { inp, units, act: a } => {
                let (wk, b) = (&p[pi], &p[pi + 1]);
                pi += 2;
                let mut out = vec![0.0; batch * units];
                for n in 0..batch {
                    for u in 0..*units {
                        let mut acc = b[u];
                        for i in 0..*inp {
                            acc += cur[n * inp + i] * wk[i * units + u];
                        }
                        out[n * units + u] = act(*a, acc);
                    }
                }
                cur = out;
                shape = vec![*units];
            }
        }
    }
    let c = shape[0];
    let mut loss = 0.0;
    for (n, &label) in y.iter().enumerate() {
        let z = &cur[n * c..(n + 1) * c];
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss += lse - z[label as usize];
    }
    loss / batch as f64
}

fn close(analytic: f64, numeric: f64) -> bool {
    (analytic - numeric).abs() <= 2e-3 * analytic.abs().max(numeric.abs()) + 2e-5
}

/// Checks every parameter and input gradient of `model` on a random batch of `batch` samples.
fn check(mut model: Model, batch: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let in_len = model.in_len();
    // Non-zero biases so that the bias path is exercised with non-trivial values.
    let names = model.param_names();
    for name in &names {
        let len = model
            .params()
            .into_iter()
            .find(|p| &p.0 == name)
            .map(|p| p.2.len())
            .unwrap_or(0);
        if name.ends_with("/bias") {
            let v: Vec<f32> = (0..len).map(|_| rng.gen_range(-0.2..0.2)).collect();
            model.set_param(name, &v).unwrap();
        }
    }
    let x: Vec<f32> = (0..batch * in_len)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let y: Vec<u8> = (0..batch)
        .map(|_| rng.gen_range(0..model.classes as u8))
        .collect();
    model.ws.input_grad = Some(Vec::new());
    model.ensure_backward(batch);
    model.ws.x[..x.len()].copy_from_slice(&x);
    model.ws.y[..batch].copy_from_slice(&y);
    model.forward(batch, true);
    let (loss_sum, _) = model.loss_and_grad(batch);
    model.backward(batch);

    let p64: Vec<Vec<f64>> = model
        .params()
        .iter()
        .map(|p| p.2.iter().map(|&v| v as f64).collect())
        .collect();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let reference = reference_loss(&model, &p64, &x64, &y);
    let engine = loss_sum / batch as f64;
    assert!(
        (engine - reference).abs() < 1e-5 * reference.abs().max(1.0),
        "loss: engine {engine} vs reference {reference}"
    );

    let eps = 1e-6;
    let grads: Vec<Vec<f32>> = model.grads().into_iter().map(|g| g.1.to_vec()).collect();
    for (t, g) in grads.iter().enumerate() {
        for (i, &a) in g.iter().enumerate() {
            let mut pp = p64.clone();
            pp[t][i] += eps;
            let up = reference_loss(&model, &pp, &x64, &y);
            pp[t][i] -= 2.0 * eps;
            let down = reference_loss(&model, &pp, &x64, &y);
            let num = (up - down) / (2.0 * eps);
            assert!(
                close(a as f64, num),
                "{}[{i}]: analytic {a} vs numeric {num}",
                names[t]
            );
        }
    }
    let dx = model.ws.input_grad.clone().unwrap();
    for i in 0..x.len() {
        let mut xx = x64.clone();
        xx[i] += eps;
        let up = reference_loss(&model, &p64, &xx, &y);
        xx[i] -= 2.0 * eps;
        let down = reference_loss(&model, &p64, &xx, &y);
        let num = (up - down) / (2.0 * eps);
        assert!(
            close(dx[i] as f64, num),
            "input[{i}]: analytic {} vs numeric {num}",
            dx[i]
        );
    }
}

#[test]
fn conv_valid_stride1_relu_maxpool_dense_softmax() {
    let m = Sequential::new([7, 7, 2])
        .conv2d(3, 3, 1, Padding::Valid, Activation::Relu)
        .max_pool2d(2)
        .flatten()
        .dense(4, Activation::Softmax)
        .build(1)
        .unwrap();
    check(m, 6, 11);
}

#[test]
fn conv_same_stride2_selu_and_even_kernel_same() {
    // k=3 s=2 on 6x5 (pad split 0/1 and 1/1), then k=2 s=1 SAME (extra row/col bottom/right).
    let m = Sequential::new([6, 5, 2])
        .conv2d(3, 3, 2, Padding::Same, Activation::Selu)
        .conv2d(2, 2, 1, Padding::Same, Activation::Linear)
        .flatten()
        .dense(3, Activation::Linear)
        .build(2)
        .unwrap();
    check(m, 2, 12);
}

#[test]
fn conv_valid_stride2_and_hidden_dense_relu_selu() {
    let m = Sequential::new([7, 6, 3])
        .conv2d(2, 3, 2, Padding::Valid, Activation::Selu)
        .flatten()
        .dense(5, Activation::Relu)
        .dense(4, Activation::Selu)
        .dense(3, Activation::Softmax)
        .build(3)
        .unwrap();
    check(m, 3, 13);
}

#[test]
fn maxpool_odd_input_floors_and_routes_gradient() {
    let m = Sequential::new([5, 5, 2])
        .max_pool2d(2)
        .flatten()
        .dense(2, Activation::Softmax)
        .build(4)
        .unwrap();
    check(m, 2, 14);
}

#[test]
fn conv_same_stride1_into_pool_and_conv() {
    let m = Sequential::new([6, 6, 1])
        .conv2d(2, 3, 1, Padding::Same, Activation::Relu)
        .max_pool2d(2)
        .conv2d(3, 2, 1, Padding::Valid, Activation::Selu)
        .flatten()
        .dense(3, Activation::Softmax)
        .build(5)
        .unwrap();
    check(m, 2, 15);
}

#[test]
fn direct_convolution_kernels_with_input_gradient() {
    // 16 filters and small windows: the direct (no im2col) kernels on AVX-512 CPUs, the
    // second convolution with an input gradient.
    let m = Sequential::new([6, 6, 2])
        .conv2d(16, 3, 1, Padding::Valid, Activation::Relu)
        .max_pool2d(2)
        .conv2d(16, 1, 1, Padding::Valid, Activation::Selu)
        .flatten()
        .dense(3, Activation::Softmax)
        .build(6)
        .unwrap();
    check(m, 2, 16);
}

#[test]
fn direct_input_gradient_and_pool_after_pool() {
    // 16 input channels: the input gradient of the first convolution by the direct kernel on
    // AVX-512 CPUs; its SELU output lives only in the chunk's scratch (the pooling above keeps
    // its argmax), and only its 4x4 outputs that the pooling covers (of 5x5) are computed; a
    // pooling after a pooling; 7 samples span a partial chunk.
    let m = Sequential::new([6, 6, 16])
        .conv2d(16, 2, 1, Padding::Valid, Activation::Selu)
        .max_pool2d(2)
        .max_pool2d(2)
        .flatten()
        .dense(3, Activation::Softmax)
        .build(7)
        .unwrap();
    check(m, 7, 17);
}

#[test]
fn winograd_convolution_with_input_gradient() {
    // 3x3, stride 1, 16 channels and filters, even output: on AVX-512 CPUs the forward and
    // the input gradient run as Winograd F(2x2, 3x3) convolutions.
    let m = Sequential::new([6, 6, 16])
        .conv2d(16, 3, 1, Padding::Valid, Activation::Selu)
        .max_pool2d(2)
        .flatten()
        .dense(3, Activation::Softmax)
        .build(8)
        .unwrap();
    check(m, 2, 18);
}
