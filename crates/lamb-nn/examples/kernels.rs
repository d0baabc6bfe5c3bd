//! Times the engine's kernels one by one on the seed CNN's shapes at batch 100:
//! `cargo run --release -p lamb-nn --example kernels` (set `KERNELS_FILTER=text` to time only
//! the kernels whose name contains it).

use lamb_nn::kernels::{self, ConvGeom, Mat, PoolGeom};
use lamb_nn::Activation;
use std::time::Instant;

/// Times `f` (after a warm-up) unless the environment variable `KERNELS_FILTER` is set and
/// `name` does not contain it.
fn time(name: &str, reps: usize, mut f: impl FnMut()) {
    if let Ok(filter) = std::env::var("KERNELS_FILTER") {
        if !name.contains(&filter) {
            return;
        }
    }
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<40} median {:8.3} ms  min {:8.3} ms",
        v[v.len() / 2],
        v[0]
    );
}

fn main() {
    let b = 100;
    let g1 = ConvGeom {
        h: 32,
        w: 32,
        c: 3,
        k: 3,
        s: 1,
        pad_top: 0,
        pad_left: 0,
        ho: 30,
        wo: 30,
    };
    let g2 = ConvGeom {
        h: 15,
        w: 15,
        c: 32,
        k: 3,
        s: 1,
        pad_top: 0,
        pad_left: 0,
        ho: 13,
        wo: 13,
    };
    let x: Vec<f32> = (0..b * 3072).map(|i| (i % 251) as f32 / 251.0).collect();
    let mut cols1 = vec![0.0f32; b * 900 * 27];
    let mut out1 = vec![0.0f32; b * 900 * 32];
    let w1: Vec<f32> = (0..27 * 32)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.05)
        .collect();
    let b1 = vec![0.01f32; 32];
    time("conv1 im2col", 20, || kernels::im2col(&g1, &x, &mut cols1));
    time("conv1 gemm (rayon)", 20, || {
        kernels::matmul(
            b * 900,
            32,
            27,
            &mut out1,
            Mat::rows(&cols1, 27),
            Mat::rows(&w1, 32),
            false,
        )
    });
    time("conv1 gemm (1 thread)", 20, || {
        kernels::matmul_st(
            b * 900,
            32,
            27,
            &mut out1,
            Mat::rows(&cols1, 27),
            Mat::rows(&w1, 32),
            false,
        )
    });
    time("conv1 bias_act relu", 20, || {
        kernels::bias_act(&mut out1, &b1, Activation::Relu, 900)
    });
    time("conv1 forward fused", 20, || {
        kernels::conv_forward(
            &g1,
            32,
            Activation::Relu,
            &w1,
            &b1,
            &x,
            &mut cols1,
            &mut out1,
        )
    });
    let p1 = PoolGeom {
        h: 30,
        w: 30,
        c: 32,
        p: 2,
        ho: 15,
        wo: 15,
    };
    let mut pool1 = vec![0.0f32; b * 225 * 32];
    time("pool1 forward", 20, || {
        kernels::maxpool_forward(&p1, &out1, &mut pool1)
    });
    let mut dout1 = vec![0.0f32; b * 900 * 32];
    time("pool1 backward", 20, || {
        kernels::maxpool_backward(
            &p1,
            &out1,
            &pool1,
            &pool1,
            Some(Activation::Relu),
            &mut dout1,
        )
    });
    let mut dw1 = vec![0.0f32; 27 * 32];
    let mut db1 = vec![0.0f32; 32];
    time("conv1 backward (no dx)", 20, || {
        kernels::conv_backward(
            &g1,
            32,
            Activation::Relu,
            &w1,
            &x,
            &out1,
            &mut dout1,
            &mut cols1,
            &mut dw1,
            &mut db1,
            None,
            true,
        )
    });
    let mut cols2 = vec![0.0f32; b * 169 * 288];
    let mut out2 = vec![0.0f32; b * 169 * 64];
    let w2: Vec<f32> = (0..288 * 64)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.05)
        .collect();
    let b2 = vec![0.01f32; 64];
    time("conv2 im2col", 20, || {
        kernels::im2col(&g2, &pool1, &mut cols2)
    });
    time("conv2 gemm (rayon)", 20, || {
        kernels::matmul(
            b * 169,
            64,
            288,
            &mut out2,
            Mat::rows(&cols2, 288),
            Mat::rows(&w2, 64),
            false,
        )
    });
    time("conv2 forward fused", 20, || {
        kernels::conv_forward(
            &g2,
            64,
            Activation::Relu,
            &w2,
            &b2,
            &pool1,
            &mut cols2,
            &mut out2,
        )
    });
    let mut dout2 = vec![0.0f32; b * 169 * 64];
    let mut dw2 = vec![0.0f32; 288 * 64];
    let mut db2 = vec![0.0f32; 64];
    let mut dcols2 = vec![0.0f32; b * 169 * 288];
    let mut dx2 = vec![0.0f32; b * 225 * 32];
    time("conv2 backward (with dx)", 20, || {
        kernels::conv_backward(
            &g2,
            64,
            Activation::Relu,
            &w2,
            &pool1,
            &out2,
            &mut dout2,
            &mut cols2,
            &mut dw2,
            &mut db2,
            Some((&mut dx2, &mut dcols2)),
            true,
        )
    });
    time("conv2 dW gemm (rayon, K=batch*169)", 20, || {
        kernels::matmul(
            288,
            64,
            b * 169,
            &mut dw2,
            Mat::rows_t(&cols2, 288),
            Mat::rows(&dout2, 64),
            false,
        )
    });
    time("conv2 dcols gemm (rayon)", 20, || {
        kernels::matmul(
            b * 169,
            288,
            64,
            &mut dcols2,
            Mat::rows(&dout2, 64),
            Mat::rows_t(&w2, 64),
            false,
        )
    });
    time("conv2 col2im", 20, || {
        kernels::col2im(&g2, &dcols2, &mut dx2)
    });
    let ck = kernels::CONV_CHUNK * 169;
    let mut pw = vec![0.0f32; 288 * 64];
    time("conv2 chunk dW = cols^T dy (288x64, k=chunk)", 50, || {
        kernels::matmul_st(
            288,
            64,
            ck,
            &mut pw,
            Mat::rows_t(&cols2[..ck * 288], 288),
            Mat::rows(&dout2[..ck * 64], 64),
            false,
        )
    });
    time("conv2 chunk dW^T = dy^T cols (64x288, k=chunk)", 50, || {
        kernels::matmul_st(
            64,
            288,
            ck,
            &mut pw,
            Mat::rows_t(&dout2[..ck * 64], 64),
            Mat::rows(&cols2[..ck * 288], 288),
            false,
        )
    });
    time("conv2 chunk dcols = dy w^T (chunk x 288, k=64)", 50, || {
        kernels::matmul_st(
            ck,
            288,
            64,
            &mut dcols2[..ck * 288],
            Mat::rows(&dout2[..ck * 64], 64),
            Mat::rows_t(&w2, 64),
            false,
        )
    });
    time("conv2 chunk fwd gemm (chunk x 64, k=288)", 50, || {
        kernels::matmul_st(
            ck,
            64,
            288,
            &mut out2[..ck * 64],
            Mat::rows(&cols2[..ck * 288], 288),
            Mat::rows(&w2, 64),
            false,
        )
    });
    let n = kernels::CONV_CHUNK;
    time("conv2 backward, one chunk of images", 200, || {
        kernels::conv_backward(
            &g2,
            64,
            Activation::Relu,
            &w2,
            &pool1[..n * 225 * 32],
            &out2[..ck * 64],
            &mut dout2[..ck * 64],
            &mut cols2[..ck * 288],
            &mut dw2,
            &mut db2,
            Some((&mut dx2[..n * 225 * 32], &mut dcols2[..ck * 288])),
            true,
        )
    });
    time("conv2 backward (no dx), one chunk of images", 200, || {
        kernels::conv_backward(
            &g2,
            64,
            Activation::Relu,
            &w2,
            &pool1[..n * 225 * 32],
            &out2[..ck * 64],
            &mut dout2[..ck * 64],
            &mut cols2[..ck * 288],
            &mut dw2,
            &mut db2,
            None,
            true,
        )
    });
    // The second convolution as the model runs it: only the 12 x 12 outputs its pooling reads.
    let g2c = ConvGeom {
        ho: 12,
        wo: 12,
        ..g2
    };
    let cc = n * 144;
    time("conv2 cropped backward (with dx), one chunk", 200, || {
        kernels::conv_backward(
            &g2c,
            64,
            Activation::Relu,
            &w2,
            &pool1[..n * 225 * 32],
            &out2[..cc * 64],
            &mut dout2[..cc * 64],
            &mut [],
            &mut dw2,
            &mut db2,
            Some((&mut dx2[..n * 225 * 32], &mut dcols2[..cc * 288])),
            true,
        )
    });
    time("conv2 cropped backward (no dx), one chunk", 200, || {
        kernels::conv_backward(
            &g2c,
            64,
            Activation::Relu,
            &w2,
            &pool1[..n * 225 * 32],
            &out2[..cc * 64],
            &mut dout2[..cc * 64],
            &mut [],
            &mut dw2,
            &mut db2,
            None,
            true,
        )
    });
    time("conv2 cropped forward, one chunk", 200, || {
        kernels::conv_forward(
            &g2c,
            64,
            Activation::Relu,
            &w2,
            &b2,
            &pool1[..n * 225 * 32],
            &mut [],
            &mut out2[..cc * 64],
        )
    });
    time("conv2 forward, one chunk of images", 200, || {
        kernels::conv_forward(
            &g2,
            64,
            Activation::Relu,
            &w2,
            &b2,
            &pool1[..n * 225 * 32],
            &mut cols2[..ck * 288],
            &mut out2[..ck * 64],
        )
    });
    time("conv1 forward, one chunk of images", 200, || {
        kernels::conv_forward(
            &g1,
            32,
            Activation::Relu,
            &w1,
            &b1,
            &x[..n * 3072],
            &mut cols1,
            &mut out1[..n * 900 * 32],
        )
    });
    time("conv1 backward (no dx), one chunk of images", 200, || {
        kernels::conv_backward(
            &g1,
            32,
            Activation::Relu,
            &w1,
            &x[..n * 3072],
            &out1[..n * 900 * 32],
            &mut dout1[..n * 900 * 32],
            &mut cols1,
            &mut dw1,
            &mut db1,
            None,
            true,
        )
    });
    time("pool1 forward, one chunk of images", 200, || {
        kernels::maxpool_forward(&p1, &out1[..n * 900 * 32], &mut pool1[..n * 225 * 32])
    });
    let mut arg1 = vec![0u8; n * 225 * 32];
    time("pool1 forward + argmax, one chunk of images", 200, || {
        kernels::maxpool_forward_arg(
            &p1,
            &out1[..n * 900 * 32],
            &mut pool1[..n * 225 * 32],
            &mut arg1,
        )
    });
    time(
        "pool1 backward from argmax, one chunk of images",
        200,
        || {
            kernels::maxpool_backward_arg(
                &p1,
                &arg1,
                &pool1[..n * 225 * 32],
                &pool1[..n * 225 * 32],
                Some(Activation::Relu),
                &mut dout1[..n * 900 * 32],
            )
        },
    );
    time("pool1 backward, one chunk of images", 200, || {
        kernels::maxpool_backward(
            &p1,
            &out1[..n * 900 * 32],
            &pool1[..n * 225 * 32],
            &pool1[..n * 225 * 32],
            Some(Activation::Relu),
            &mut dout1[..n * 900 * 32],
        )
    });
    // The classifier head at batch 100: 100 x 2304 (6 x 6 x 64) by 2304 x 10.
    let (inp, units) = (2304, 10);
    let hx: Vec<f32> = (0..b * inp).map(|i| (i % 97) as f32 / 97.0).collect();
    let hw: Vec<f32> = (0..inp * units)
        .map(|i| (i % 13) as f32 / 13.0 - 0.5)
        .collect();
    let hb = vec![0.1f32; units];
    let hdy: Vec<f32> = (0..b * units).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
    let mut hwt = vec![0.0f32; inp * units];
    let mut hout = vec![0.0f32; b * units];
    let mut hdw = vec![0.0f32; inp * units];
    let mut hdx = vec![0.0f32; b * inp];
    time("dense forward gemm (rayon)", 200, || {
        kernels::matmul(
            b,
            units,
            inp,
            &mut hout,
            Mat::rows(&hx, inp),
            Mat::rows(&hw, units),
            false,
        )
    });
    time("dense dW gemm (rayon)", 200, || {
        kernels::matmul(
            inp,
            units,
            b,
            &mut hdw,
            Mat::rows_t(&hx, inp),
            Mat::rows(&hdy, units),
            false,
        )
    });
    time("dense dx gemm (rayon)", 200, || {
        kernels::matmul(
            b,
            inp,
            units,
            &mut hdx,
            Mat::rows(&hdy, units),
            Mat::rows_t(&hw, units),
            false,
        )
    });
    time("dense transpose", 200, || {
        kernels::dense::transpose(&hw, inp, units, &mut hwt)
    });
    time("dense forward kernel", 200, || {
        kernels::dense::forward(&hx, &hwt, &hb, Activation::Softmax, inp, &mut hout)
    });
    time("dense dW kernel", 200, || {
        kernels::dense::weight_grad(&hx, &hdy, inp, units, &mut hdw)
    });
    time("dense dx kernel", 200, || {
        kernels::dense::input_grad(&hdy, &hwt, units, inp, &mut hdx)
    });
}
