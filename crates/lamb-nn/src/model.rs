//! Sequential models: layer specifications, building with Keras-default initialisers, the
//! forward and backward passes over reusable NHWC buffers, and the summary table.

use std::time::Instant;

use rand::distributions::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use std::sync::Mutex;

use rayon::prelude::*;

use crate::graph::GraphNet;
use crate::kernels::{self, ConvGeom, PoolGeom};
use crate::{ModelSpec, NnError};

/// Activation applied after a layer's affine part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// max(x, 0).
    Relu,
    /// Scaled exponential linear unit with Keras' constants.
    Selu,
    /// Softmax over the last axis; only as the output layer's activation, where it is fused
    /// with the cross-entropy loss for training and applied for predictions.
    Softmax,
    /// Identity.
    Linear,
}

/// Convolution padding, as Keras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Padding {
    /// No padding; output `floor((n - k) / s) + 1`.
    Valid,
    /// Output `ceil(n / s)`, zero padding split as TensorFlow does (extra row/column at the
    /// bottom/right).
    Same,
}

#[derive(Debug, Clone)]
enum Spec {
    Conv {
        filters: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
        act: Activation,
    },
    Pool {
        pool: usize,
    },
    Flatten,
    Dense {
        units: usize,
        act: Activation,
    },
}

/// A model description: a stack of layers on inputs of a fixed per-sample shape `[h, w, c]`.
/// Builder methods never fail; [`Sequential::build`] validates the whole stack.
#[derive(Debug, Clone)]
pub struct Sequential {
    input_shape: [usize; 3],
    specs: Vec<Spec>,
}

impl Sequential {
    /// Empty model for inputs of shape `[h, w, c]` (per sample).
    pub fn new(input_shape: [usize; 3]) -> Self {
        Sequential {
            input_shape,
            specs: Vec::new(),
        }
    }

    /// Appends a 2-D convolution with `filters` square `kernel`s, `stride`, `padding` and `act`.
    pub fn conv2d(
        mut self,
        filters: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
        act: Activation,
    ) -> Self {
        self.specs.push(Spec::Conv {
            filters,
            kernel,
            stride,
            padding,
            act,
        });
        self
    }

    /// Appends a max pooling with square `pool` and stride `pool` (Keras default, `valid`).
    pub fn max_pool2d(mut self, pool: usize) -> Self {
        self.specs.push(Spec::Pool { pool });
        self
    }

    /// Appends a flatten over (h, w, c).
    pub fn flatten(mut self) -> Self {
        self.specs.push(Spec::Flatten);
        self
    }

    /// Appends a fully connected layer on a flat input.
    pub fn dense(mut self, units: usize, act: Activation) -> Self {
        self.specs.push(Spec::Dense { units, act });
        self
    }

    /// Validates the stack and allocates parameters with Keras-default initialisers (glorot
    /// uniform kernels, zero biases) drawn from a ChaCha8 generator seeded with `seed`.
    pub fn build(self, seed: u64) -> Result<Model, NnError> {
        let [h, w, c] = self.input_shape;
        if h == 0 || w == 0 || c == 0 {
            return Err(NnError::InvalidArgument {
                name: "input_shape",
                value: format!("{:?}", self.input_shape),
                valid: "every dimension at least 1".into(),
            });
        }
        if self.specs.is_empty() {
            return Err(NnError::InvalidArgument {
                name: "layers",
                value: "0".into(),
                valid: "at least one layer, the last a Dense with softmax or linear activation"
                    .into(),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut shape: Vec<usize> = self.input_shape.to_vec();
        let mut layers = Vec::new();
        let (mut n_conv, mut n_pool, mut n_flat, mut n_dense) = (0, 0, 0, 0);
        let last = self.specs.len() - 1;
        for (i, spec) in self.specs.iter().enumerate() {
            let err = |kind: &'static str, message: String| NnError::InvalidModel {
                layer: i,
                kind,
                message,
            };
            let image = |kind: &'static str, shape: &[usize]| -> Result<[usize; 3], NnError> {
                match shape {
                    [h, w, c] => Ok([*h, *w, *c]),
                    _ => Err(err(
                        kind,
                        format!("needs an image input (h, w, c), got {shape:?}"),
                    )),
                }
            };
            let act_ok = |kind: &'static str, act: Activation| -> Result<(), NnError> {
                if act == Activation::Softmax && (i != last || kind != "Dense") {
                    return Err(err(
                        kind,
                        "softmax is supported only as the last Dense layer's activation".into(),
                    ));
                }
                Ok(())
            };
            let layer = match *spec {
                Spec::Conv {
                    filters,
                    kernel,
                    stride,
                    padding,
                    act,
                } => {
                    let [h, w, c] = image("Conv2D", &shape)?;
                    act_ok("Conv2D", act)?;
                    if filters == 0 || kernel == 0 || stride == 0 {
                        return Err(err("Conv2D", format!("filters {filters}, kernel {kernel}, stride {stride}: each must be at least 1")));
                    }
                    let (ho, wo, pt, pl) = match padding {
                        Padding::Valid => {
                            if h < kernel || w < kernel {
                                return Err(err("Conv2D", format!("kernel {kernel} larger than input {h}x{w} with valid padding")));
                            }
                            ((h - kernel) / stride + 1, (w - kernel) / stride + 1, 0, 0)
                        }
                        Padding::Same => {
                            let ho = h.div_ceil(stride);
                            let wo = w.div_ceil(stride);
                            let ph = ((ho - 1) * stride + kernel).saturating_sub(h);
                            let pw = ((wo - 1) * stride + kernel).saturating_sub(w);
                            (ho, wo, ph / 2, pw / 2)
                        }
                    };
                    let g = ConvGeom {
                        h,
                        w,
                        c,
                        k: kernel,
                        s: stride,
                        pad_top: pt,
                        pad_left: pl,
                        ho,
                        wo,
                    };
                    let name = keras_name("conv2d", &mut n_conv);
                    let fan_in = kernel * kernel * c;
                    let fan_out = kernel * kernel * filters;
                    let kernel_p = Param::glorot(
                        &name,
                        vec![kernel, kernel, c, filters],
                        fan_in,
                        fan_out,
                        &mut rng,
                    );
                    let bias_p = Param::zeros(&format!("{name}/bias"), vec![filters]);
                    shape = vec![ho, wo, filters];
                    Layer {
                        name,
                        kind: Kind::Conv {
                            g,
                            filters,
                            act,
                            padding,
                        },
                        in_len: h * w * c,
                        params: vec![kernel_p, bias_p],
                    }
                }
                Spec::Pool { pool } => {
                    let [h, w, c] = image("MaxPooling2D", &shape)?;
                    if pool == 0 || pool > h || pool > w {
                        return Err(err(
                            "MaxPooling2D",
                            format!("pool {pool} must be between 1 and the input size {h}x{w}"),
                        ));
                    }
                    let g = PoolGeom {
                        h,
                        w,
                        c,
                        p: pool,
                        ho: h / pool,
                        wo: w / pool,
                    };
                    shape = vec![g.ho, g.wo, c];
                    Layer {
                        name: keras_name("max_pooling2d", &mut n_pool),
                        kind: Kind::Pool { g },
                        in_len: h * w * c,
                        params: vec![],
                    }
                }
                Spec::Flatten => {
                    let n: usize = shape.iter().product();
                    shape = vec![n];
                    Layer {
                        name: keras_name("flatten", &mut n_flat),
                        kind: Kind::Flatten,
                        in_len: n,
                        params: vec![],
                    }
                }
                Spec::Dense { units, act } => {
                    act_ok("Dense", act)?;
                    let inp = match shape[..] {
                        [n] => n,
                        _ => {
                            return Err(err(
                                "Dense",
                                format!(
                                    "needs a flat input, got {shape:?}: add flatten() before it"
                                ),
                            ))
                        }
                    };
                    if units == 0 {
                        return Err(err("Dense", "units must be at least 1".into()));
                    }
                    let name = keras_name("dense", &mut n_dense);
                    let kernel_p = Param::glorot(&name, vec![inp, units], inp, units, &mut rng);
                    let bias_p = Param::zeros(&format!("{name}/bias"), vec![units]);
                    shape = vec![units];
                    Layer {
                        name,
                        kind: Kind::Dense { inp, units, act },
                        in_len: inp,
                        params: vec![kernel_p, bias_p],
                    }
                }
            };
            layers.push((layer, shape.clone()));
        }
        let classes = match layers.last().map(|(l, _)| &l.kind) {
            Some(Kind::Dense { units, act: Activation::Softmax | Activation::Linear, .. }) => *units,
            _ => {
                return Err(NnError::InvalidModel {
                    layer: last,
                    kind: "output",
                    message: "the last layer must be Dense with softmax (or linear, read as logits) activation".into(),
                })
            }
        };
        let (layers, out_shapes): (Vec<Layer>, Vec<Vec<usize>>) = layers.into_iter().unzip();
        let n = layers.len();
        Ok(Model {
            graph: None,
            spec: None,
            input_shape: self.input_shape,
            out_lens: out_shapes.iter().map(|s| s.iter().product()).collect(),
            out_shapes,
            layers,
            classes,
            ws: Workspace::new(n),
            input: None,
            input_epoch: 0,
        })
    }
}

fn keras_name(base: &str, counter: &mut usize) -> String {
    let name = if *counter == 0 {
        base.to_string()
    } else {
        format!("{base}_{counter}")
    };
    *counter += 1;
    name
}

/// The seed CNN of the classic experiment, built: 32x32x3 -> Conv2D 32 3x3 -> MaxPool 2 ->
/// Conv2D 64 3x3 -> MaxPool 2 -> Flatten -> Dense 10 softmax (42,442 parameters).
pub fn classic_cnn(hidden: Activation, seed: u64) -> Result<Model, NnError> {
    classic_cnn_for([32, 32, 3], 10, hidden, seed)
}

/// The seed CNN's layers for inputs of `input` (height, width, channels) and `classes`
/// outputs, e.g. `[28, 28, 1]` and 10 for MNIST; [`classic_cnn`] is `[32, 32, 3]` and 10. An
/// input too small for the two valid 3x3 convolutions and 2x2 pools is refused by the builder.
pub fn classic_cnn_for(
    input: [usize; 3],
    classes: usize,
    hidden: Activation,
    seed: u64,
) -> Result<Model, NnError> {
    if !matches!(
        hidden,
        Activation::Relu | Activation::Selu | Activation::Linear
    ) {
        return Err(NnError::InvalidArgument {
            name: "hidden",
            value: format!("{hidden:?}"),
            valid: "Relu, Selu or Linear".into(),
        });
    }
    Sequential::new(input)
        .conv2d(32, 3, 1, Padding::Valid, hidden)
        .max_pool2d(2)
        .conv2d(64, 3, 1, Padding::Valid, hidden)
        .max_pool2d(2)
        .flatten()
        .dense(classes, Activation::Softmax)
        .build(seed)
}

/// One parameter tensor with its gradient buffer.
#[derive(Debug, Clone)]
pub(crate) struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
}

impl Param {
    /// A parameter `name` of `shape` holding `value`, with a zero gradient.
    pub(crate) fn new(name: String, shape: Vec<usize>, value: Vec<f32>) -> Self {
        let n = value.len();
        Param {
            name,
            shape,
            value,
            grad: vec![0.0; n],
        }
    }

    fn glorot(
        layer: &str,
        shape: Vec<usize>,
        fan_in: usize,
        fan_out: usize,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let n: usize = shape.iter().product();
        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
        let dist = Uniform::new_inclusive(-limit, limit);
        let value: Vec<f32> = (0..n).map(|_| dist.sample(rng)).collect();
        Param {
            name: format!("{layer}/kernel"),
            shape,
            value,
            grad: vec![0.0; n],
        }
    }
    fn zeros(name: &str, shape: Vec<usize>) -> Self {
        let n: usize = shape.iter().product();
        Param {
            name: name.to_string(),
            shape,
            value: vec![0.0; n],
            grad: vec![0.0; n],
        }
    }
}

/// A built layer's geometry. (`Conv::padding` is read only by the gradient tests' reference.)
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Kind {
    Conv {
        g: ConvGeom,
        filters: usize,
        act: Activation,
        padding: Padding,
    },
    Pool {
        g: PoolGeom,
    },
    Flatten,
    Dense {
        inp: usize,
        units: usize,
        act: Activation,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub name: String,
    pub kind: Kind,
    pub in_len: usize,
    pub params: Vec<Param>,
}

impl Layer {
    fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Conv { .. } => "Conv2D",
            Kind::Pool { .. } => "MaxPooling2D",
            Kind::Flatten => "Flatten",
            Kind::Dense { .. } => "Dense",
        }
    }
}

/// One scratch buffer per rayon thread, each behind its own (uncontended) lock: a chunk of
/// images uses its thread's buffer while it runs, so the buffer stays in that core's cache.
/// Scratch contents never reach a result, so which buffer a chunk gets does not matter.
#[derive(Debug, Default)]
pub(crate) struct ScratchPool(Vec<Mutex<Vec<f32>>>);

impl Clone for ScratchPool {
    /// A clone starts with empty buffers (they are only scratch).
    fn clone(&self) -> Self {
        ScratchPool::default()
    }
}

impl ScratchPool {
    /// Runs `f` with the calling thread's buffer, grown to at least `len` values.
    fn with<R>(&self, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let i = rayon::current_thread_index().unwrap_or(0) % self.0.len().max(1);
        let mut buf = match self.0.get(i) {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()),
            None => return f(&mut vec![0.0; len]),
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    }

    /// Makes sure there is one buffer per thread of the current rayon pool, each of at least
    /// `len` values. Sized here, before a pass, so that no buffer grows inside one: a thread
    /// that got no chunk in earlier steps would otherwise allocate in a later one.
    fn ensure(&mut self, len: usize) {
        let n = rayon::current_num_threads().max(1);
        if self.0.len() < n {
            self.0.resize_with(n, Default::default);
        }
        for m in &mut self.0 {
            let buf = m.get_mut().unwrap_or_else(|e| e.into_inner());
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
    }
}

/// Buffers reused across steps; they only grow (to the largest batch seen).
#[derive(Debug, Default, Clone)]
pub(crate) struct Workspace {
    pub x: Vec<f32>,
    pub y: Vec<u8>,
    /// Layer outputs (left empty for the image segment's transient convolution outputs).
    pub out: Vec<Vec<f32>>,
    /// Gradients w.r.t. layer outputs (left empty inside the image segment, but its top).
    pub dout: Vec<Vec<f32>>,
    /// Per layer, the stored argmax of a pooling (empty for other layers).
    pub arg: Vec<Vec<u8>>,
    /// Per layer, a convolution's per-chunk partial weight and bias gradients (overwritten
    /// by each backward pass; kept to avoid fresh pages every step).
    pub parts: Vec<Vec<f32>>,
    /// Per-thread im2col and `dcols` blocks of the image segment (one chunk of images each).
    pub scratch: ScratchPool,
    /// Per layer, a dense layer's kernel transposed (`units x inp`): made by the forward
    /// pass, read by the backward pass that follows it (same weights).
    pub dense_wt: Vec<Vec<f32>>,
    /// When `Some`, backward also computes the gradient with respect to the input (tests).
    pub input_grad: Option<Vec<f32>>,
    pub fwd_cap: usize,
    pub bwd_cap: usize,
    /// Seconds spent per layer in forward and backward since the last reset.
    pub fwd_secs: Vec<f64>,
    pub bwd_secs: Vec<f64>,
    /// How the image segment runs, rebuilt by each pass.
    pub plan: SegmentPlan,
    /// Per image-segment layer, a convolution's [`kernels::winograd_weights`] (made by the
    /// forward pass; the backward pass, which always follows it with the same weights, reads
    /// it too) and [`kernels::dx_weights`] (backward).
    pub us: Vec<Vec<f32>>,
    pub wts: Vec<Vec<f32>>,
    /// Scratch of [`kernels::sum_conv_partials`].
    pub du: Vec<f32>,
    /// Per chunk of images, the CPU seconds of each image-segment layer (chunk-major).
    pub chunk_secs: Vec<f64>,
    /// Spare allocations of the passes' per-chunk slice lists ([`recycle`]).
    pub lists: [Vec<[usize; 2]>; 4],
    /// Spare allocation of the optimizer's parameter views ([`recycle`]).
    pub views: Vec<[usize; PARAM_MUT_WORDS]>,
}

/// Words of a `ParamMut` (the element of [`Workspace::views`] has its size and alignment).
pub(crate) const PARAM_MUT_WORDS: usize =
    size_of::<lamb_optim::ParamMut<'static>>() / size_of::<usize>();

impl Workspace {
    fn new(layers: usize) -> Self {
        Workspace {
            out: vec![Vec::new(); layers],
            dout: vec![Vec::new(); layers],
            arg: vec![Vec::new(); layers],
            parts: vec![Vec::new(); layers],
            fwd_secs: vec![0.0; layers],
            bwd_secs: vec![0.0; layers],
            ..Default::default()
        }
    }
}

/// One of two iterators of the same items (the two engines' parameter lists).
pub(crate) enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<T, A: Iterator<Item = T>, B: Iterator<Item = T>> Iterator for Either<A, B> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            Either::Left(a) => a.next(),
            Either::Right(b) => b.next(),
        }
    }
}

/// A built model: parameters, gradients and the reusable work buffers. Runs on the fused
/// engine (`layers`, the seed CNN's stacks) or on the general graph engine (`graph`).
#[derive(Debug, Clone)]
pub struct Model {
    /// The general engine's graph; `layers` is then empty.
    pub(crate) graph: Option<Box<GraphNet>>,
    /// The description it was built from, when built from one.
    pub(crate) spec: Option<ModelSpec>,
    pub(crate) input_shape: [usize; 3],
    pub(crate) layers: Vec<Layer>,
    pub(crate) out_shapes: Vec<Vec<usize>>,
    pub(crate) out_lens: Vec<usize>,
    pub(crate) classes: usize,
    pub(crate) ws: Workspace,
    /// How batches are made from images (standardization, augmentation); `None`: pixels
    /// scaled by 1/255, as the classic experiment does.
    pub(crate) input: Option<Box<lamb_data::InputPipeline>>,
    /// The epoch (from 0) whose training batches are being made (augmentation draws follow it).
    pub(crate) input_epoch: u64,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Length of a convolution's im2col block for one chunk of images (none for the direct
/// kernels), and of its `dcols` block when the input gradient is needed (none for the direct
/// input gradient); the largest of the segment's layers.
fn scratch_lens(kinds: &[Kind], input_grad: bool) -> (usize, usize) {
    let (mut cols, mut dcols) = (0, 0);
    for (i, kind) in kinds.iter().enumerate() {
        if let Kind::Conv { g, filters, .. } = *kind {
            let n = kernels::CONV_CHUNK * g.positions() * g.kkc();
            if !kernels::conv_direct(&g, filters) {
                cols = cols.max(n);
            }
            if (i > 0 || input_grad) && !kernels::conv_direct_dx(&g, filters) {
                dcols = dcols.max(n);
            }
        }
    }
    (cols, dcols)
}

/// Whether a layer is a pooling that keeps its argmax (one byte per output) for the backward
/// pass instead of finding it again from its input.
fn stores_argmax(l: &Layer) -> bool {
    matches!(l.kind, Kind::Pool { g } if g.p <= kernels::MAX_ARG_POOL)
}

/// Whether layer `i` of an image segment has an output that lives only in a chunk's scratch
/// during the forward pass: a convolution whose output feeds a pooling that stores its argmax
/// (nothing reads that output later: the pooling's backward fuses the activation derivative,
/// computed from the pooled maximum).
fn is_transient(layers: &[Layer], i: usize) -> bool {
    matches!(layers[i].kind, Kind::Conv { .. }) && layers.get(i + 1).is_some_and(stores_argmax)
}

/// Sets `kinds` (an image segment's layer kinds) to the geometry each layer runs with: a
/// transient convolution ([`is_transient`]) computes only the outputs its pooling's windows
/// cover (the others are never read and get a zero gradient, so they add nothing to any
/// gradient), and that pooling reads exactly them.
fn run_kinds(kinds: &mut [Kind], transient: &[bool]) {
    for i in 0..kinds.len() {
        let pg = match (kinds.get(i + 1), transient[i]) {
            (Some(Kind::Pool { g }), true) => *g,
            _ => continue,
        };
        let (ho, wo) = (pg.ho * pg.p, pg.wo * pg.p);
        if let Kind::Conv { g, .. } = &mut kinds[i] {
            g.ho = ho;
            g.wo = wo;
        }
        if let Kind::Pool { g } = &mut kinds[i + 1] {
            g.h = ho;
            g.w = wo;
        }
    }
}

/// Whether layer `i` of an image segment (run as `kinds`) is a transient convolution that
/// runs fused with the pooling above it ([`kernels::conv_pool_fused`]); `input_grad`: whether
/// the segment's first layer computes an input gradient (backward pass).
fn is_fused(kinds: &[Kind], transient: &[bool], input_grad: bool, i: usize) -> bool {
    match (&kinds[i], kinds.get(i + 1)) {
        (Kind::Conv { g, filters, .. }, Some(Kind::Pool { g: pg })) if transient[i] => {
            kernels::conv_pool_fused(g, *filters, pg, i > 0 || input_grad)
        }
        _ => false,
    }
}

/// How the layers of an image segment run, per layer: whether its output is transient
/// ([`is_transient`]), the geometry it runs with ([`run_kinds`]) and whether it is a
/// convolution fused with the pooling above ([`is_fused`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct SegmentPlan {
    transient: Vec<bool>,
    kinds: Vec<Kind>,
    fused: Vec<bool>,
}

impl SegmentPlan {
    /// Rebuilds the plan of `layers` in place; `input_grad` as [`is_fused`].
    fn update(&mut self, layers: &[Layer], input_grad: bool) {
        let n = layers.len();
        self.transient.clear();
        self.transient
            .extend((0..n).map(|i| is_transient(layers, i)));
        self.kinds.clear();
        self.kinds.extend(layers.iter().map(|l| l.kind.clone()));
        run_kinds(&mut self.kinds, &self.transient);
        self.fused.clear();
        let (kinds, transient) = (&self.kinds, &self.transient);
        self.fused
            .extend((0..n).map(|i| is_fused(kinds, transient, input_grad, i)));
    }
}

/// Reuses the allocation of `v` (emptied) for a vector of `U`, of the same size and alignment
/// as `T` (std collects in place): a per-pass list of borrowed slices keeps one allocation,
/// stored as plain words between passes.
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    const { assert!(size_of::<T>() == size_of::<U>() && align_of::<T>() == align_of::<U>()) };
    v.clear();
    v.into_iter().map(|_| unreachable!()).collect()
}

/// Values per image of a layer's output when it runs as `kind` (0 for Flatten and Dense,
/// which never run inside the image segment).
fn run_len(kind: &Kind) -> usize {
    match kind {
        Kind::Conv { g, filters, .. } => g.positions() * filters,
        Kind::Pool { g } => g.out_len(),
        Kind::Flatten | Kind::Dense { .. } => 0,
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).rem_euclid(3) == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl Model {
    /// A model on the general engine.
    pub(crate) fn from_graph(
        net: GraphNet,
        input_shape: [usize; 3],
        classes: usize,
        spec: ModelSpec,
    ) -> Model {
        Model {
            graph: Some(Box::new(net)),
            spec: Some(spec),
            input_shape,
            layers: Vec::new(),
            out_shapes: Vec::new(),
            out_lens: Vec::new(),
            classes,
            ws: Workspace::new(0),
            input: None,
            input_epoch: 0,
        }
    }

    /// Trainable parameters, in model order (allocates nothing: training steps use it).
    pub(crate) fn param_iter(&self) -> impl Iterator<Item = &Param> + '_ {
        match &self.graph {
            Some(g) => Either::Left(g.params()),
            None => Either::Right(self.layers.iter().flat_map(|l| &l.params)),
        }
    }

    /// Mutable [`Model::param_iter`].
    pub(crate) fn param_iter_mut(&mut self) -> impl Iterator<Item = &mut Param> + '_ {
        match &mut self.graph {
            Some(g) => Either::Left(g.params_mut()),
            None => Either::Right(self.layers.iter_mut().flat_map(|l| &mut l.params)),
        }
    }

    /// Non-trainable state (BatchNormalization's moving statistics) as (name, shape,
    /// values), in model order; saved with the weights, never touched by an optimizer.
    pub fn state(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        self.graph
            .iter()
            .flat_map(|g| g.state())
            .map(|p| (p.name.clone(), p.shape.clone(), &p.value[..]))
            .collect()
    }

    /// Replaces the values of state tensor `name`.
    pub fn set_state(&mut self, name: &str, values: &[f32]) -> Result<(), NnError> {
        let known: Vec<String> = self.state().into_iter().map(|(n, ..)| n).collect();
        let p = self
            .graph
            .iter_mut()
            .flat_map(|g| g.state_mut())
            .find(|p| p.name == name)
            .ok_or_else(|| NnError::UnknownParameter {
                name: name.to_string(),
                known: known.join(", "),
            })?;
        if p.value.len() != values.len() {
            return Err(NnError::ParameterLength {
                name: name.to_string(),
                found: values.len(),
                expected: p.value.len(),
            });
        }
        p.value.copy_from_slice(values);
        Ok(())
    }

    /// Replaces the values of parameter or state tensor `name` (as [`Model::tensors`] lists).
    pub fn set_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), NnError> {
        if self.state().iter().any(|t| t.0 == name) {
            self.set_state(name, values)
        } else {
            self.set_param(name, values)
        }
    }

    /// The model's description as Keras JSON (`model.to_json()` form), when it was built from
    /// one ([`ModelSpec`], [`classic_cnn`]).
    pub fn description(&self) -> Option<String> {
        self.spec.as_ref().map(ModelSpec::to_keras_json)
    }

    /// Keras-like summary table: layer (type), output shape, parameter count, totals.
    pub fn summary(&self) -> String {
        if let Some(g) = &self.graph {
            return g.summary();
        }
        let widths = [33usize, 26, 10];
        let line_len: usize = widths.iter().sum::<usize>() + 1;
        let mut s = String::from("Model: \"sequential\"\n");
        let row = |a: &str, b: &str, c: &str| {
            format!(" {a:<w0$}{b:<w1$}{c}\n", w0 = widths[0], w1 = widths[1])
        };
        s += &"_".repeat(line_len);
        s += "\n";
        s += &row("Layer (type)", "Output Shape", "Param #");
        s += &"=".repeat(line_len);
        s += "\n";
        for (i, l) in self.layers.iter().enumerate() {
            let shape: Vec<String> = self.out_shapes[i].iter().map(|d| d.to_string()).collect();
            let count: usize = l.params.iter().map(|p| p.value.len()).sum();
            s += &row(
                &format!("{} ({})", l.name, l.type_name()),
                &format!("(None, {})", shape.join(", ")),
                &count.to_string(),
            );
            s += &if i + 1 == self.layers.len() {
                "=".repeat(line_len)
            } else {
                "_".repeat(line_len)
            };
            s += "\n";
        }
        let total = thousands(self.param_count());
        s +=
            &format!("Total params: {total}\nTrainable params: {total}\nNon-trainable params: 0\n");
        s += &"_".repeat(line_len);
        s += "\n";
        s
    }

    /// Total number of trainable parameters (the length of the flat gradient).
    pub fn param_count(&self) -> usize {
        self.param_iter().map(|p| p.value.len()).sum()
    }

    /// Parameters and state values together (Keras' "Total params").
    pub fn total_param_count(&self) -> usize {
        self.param_count() + self.state().iter().map(|s| s.2.len()).sum::<usize>()
    }

    /// Parameter names in model order (`conv2d/kernel`, `conv2d/bias`, ..., `dense/bias`).
    pub fn param_names(&self) -> Vec<String> {
        self.param_iter().map(|p| p.name.clone()).collect()
    }

    /// Every parameter as (name, shape, values), in model order.
    pub fn params(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        self.param_iter()
            .map(|p| (p.name.clone(), p.shape.clone(), &p.value[..]))
            .collect()
    }

    /// The gradients of the last training step as (name, values), in model order.
    pub fn grads(&self) -> Vec<(String, &[f32])> {
        self.param_iter()
            .map(|p| (p.name.clone(), &p.grad[..]))
            .collect()
    }

    /// Replaces the values of parameter `name`.
    pub fn set_param(&mut self, name: &str, values: &[f32]) -> Result<(), NnError> {
        let known = self.param_names().join(", ");
        let p = self
            .param_iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| NnError::UnknownParameter {
                name: name.to_string(),
                known,
            })?;
        if p.value.len() != values.len() {
            return Err(NnError::ParameterLength {
                name: name.to_string(),
                found: values.len(),
                expected: p.value.len(),
            });
        }
        p.value.copy_from_slice(values);
        Ok(())
    }

    /// Per-sample input shape `[h, w, c]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    /// Number of output classes (units of the last Dense layer).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Per-sample input length.
    pub(crate) fn in_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Layer names and types, in order (for reports).
    pub fn layer_names(&self) -> Vec<String> {
        if let Some(g) = &self.graph {
            return g
                .nodes
                .iter()
                .map(|n| format!("{} ({})", n.name, n.layer.class()))
                .collect();
        }
        self.layers
            .iter()
            .map(|l| format!("{} ({})", l.name, l.type_name()))
            .collect()
    }

    pub(crate) fn ensure_forward(&mut self, batch: usize) {
        if batch <= self.ws.fwd_cap {
            return;
        }
        let in_len = self.in_len();
        grow(&mut self.ws.x, batch * in_len);
        grow(&mut self.ws.y, batch);
        if let Some(g) = self.graph.as_mut() {
            g.ensure(batch);
        }
        let seg = self.image_segment();
        for (i, (out, len)) in self.ws.out.iter_mut().zip(&self.out_lens).enumerate() {
            // Transient outputs live in the chunks' scratch; Flatten layers are views.
            let transient = i < seg && is_transient(&self.layers[..seg], i);
            if !transient && !matches!(self.layers[i].kind, Kind::Flatten) {
                grow(out, batch * len);
            }
            if i < seg && stores_argmax(&self.layers[i]) {
                grow(&mut self.ws.arg[i], batch * len);
            }
        }
        self.ws.fwd_cap = batch;
    }

    pub(crate) fn ensure_backward(&mut self, batch: usize) {
        self.ensure_forward(batch);
        if batch <= self.ws.bwd_cap {
            return;
        }
        // Inside the image segment only its top layer's output gradient is stored.
        // Flatten layers are views (no buffers of their own).
        let first = self.image_segment().saturating_sub(1);
        for (i, (dout, len)) in self.ws.dout.iter_mut().zip(&self.out_lens).enumerate() {
            if i >= first && !matches!(self.layers[i].kind, Kind::Flatten) {
                grow(dout, batch * len);
            }
        }
        if let Some(g) = self.ws.input_grad.as_mut() {
            grow(g, batch * self.input_shape.iter().product::<usize>());
        }
        self.ws.bwd_cap = batch;
    }

    /// Number of leading Conv2D/MaxPooling2D layers: the image segment, run chunk by chunk.
    fn image_segment(&self) -> usize {
        self.layers
            .iter()
            .take_while(|l| matches!(l.kind, Kind::Conv { .. } | Kind::Pool { .. }))
            .count()
    }

    /// Forward pass on the first `batch` samples of `ws.x`; layer outputs land in `ws.out`
    /// (the last holds logits). The leading convolution and pooling layers run as one parallel
    /// loop over chunks of [`kernels::CONV_CHUNK`] images, each chunk going through all of
    /// them while its activations are in cache; the layers after run one at a time.
    pub(crate) fn forward(&mut self, batch: usize, training: bool) {
        self.ensure_forward(batch);
        if let Some(g) = self.graph.as_mut() {
            let x = &self.ws.x[..batch * self.input_shape.iter().product::<usize>()];
            g.forward(x, batch, training);
            return;
        }
        let seg = self.image_segment();
        let in0 = self.in_len();
        let Model {
            layers,
            ws,
            out_lens,
            ..
        } = self;
        if seg > 0 {
            forward_segment(&layers[..seg], out_lens, ws, in0, batch);
        }
        for (i, l) in layers.iter().enumerate().skip(seg) {
            if matches!(l.kind, Kind::Flatten) {
                // A view: the layers above read its input directly (`source`).
                continue;
            }
            let t = Instant::now();
            let (prev, rest) = ws.out.split_at_mut(i);
            let input: &[f32] = match source(layers, i) {
                None => &ws.x[..batch * in0],
                Some(j) => &prev[j][..batch * l.in_len],
            };
            let out = &mut rest[0][..batch * out_lens[i]];
            match l.kind {
                Kind::Dense { inp, units, act } => {
                    grow(&mut ws.dense_wt, layers.len());
                    let wt = &mut ws.dense_wt[i];
                    grow(wt, inp * units);
                    let wt = &mut wt[..inp * units];
                    kernels::dense::transpose(&l.params[0].value, inp, units, wt);
                    kernels::dense::forward(input, wt, &l.params[1].value, act, inp, out);
                }
                // Only the leading layers take images: they are the segment, done above.
                Kind::Conv { .. } | Kind::Pool { .. } | Kind::Flatten => {}
            }
            ws.fwd_secs[i] += t.elapsed().as_secs_f64();
        }
    }

    /// Backward pass after [`Model::forward`] on `batch` samples, starting from the gradient
    /// with respect to the logits in `ws.dout[last]`; fills every parameter's gradient. The
    /// image segment runs chunk by chunk as in the forward pass; each chunk's weight and bias
    /// gradients are summed in chunk order, so no bit depends on the thread count.
    pub(crate) fn backward(&mut self, batch: usize) {
        self.ensure_backward(batch);
        if let Some(g) = self.graph.as_mut() {
            let x = &self.ws.x[..batch * self.input_shape.iter().product::<usize>()];
            g.backward(x, batch);
            return;
        }
        let seg = self.image_segment();
        let in0 = self.in_len();
        let Model {
            layers,
            ws,
            out_lens,
            ..
        } = self;
        for i in (seg..layers.len()).rev() {
            if matches!(layers[i].kind, Kind::Flatten) {
                // A view: the layer above wrote straight into its source's gradient.
                continue;
            }
            let src = source(layers, i);
            let t = Instant::now();
            let l = &mut layers[i];
            let (dprev, drest) = ws.dout.split_at_mut(i);
            let dy = &mut drest[0][..batch * out_lens[i]];
            let input: &[f32] = match src {
                None => &ws.x[..batch * in0],
                Some(j) => &ws.out[j][..batch * l.in_len],
            };
            let y = &ws.out[i][..batch * out_lens[i]];
            let dx: Option<&mut [f32]> = match src {
                None => ws.input_grad.as_mut().map(|g| &mut g[..batch * in0]),
                Some(j) => Some(&mut dprev[j][..batch * l.in_len]),
            };
            match l.kind {
                Kind::Flatten => {}
                Kind::Dense { inp, units, act } => {
                    kernels::act_backward(dy, y, act);
                    let (kp, bp) = l.params.split_at_mut(1);
                    kernels::dense::bias_grad(dy, &mut bp[0].grad);
                    let grad = &mut kp[0].grad;
                    let wt = &ws.dense_wt[i][..inp * units];
                    let dy = &*dy;
                    // Both gradients in one parallel region.
                    rayon::join(
                        || kernels::dense::weight_grad(input, dy, inp, units, grad),
                        || {
                            if let Some(dx) = dx {
                                kernels::dense::input_grad(dy, wt, units, inp, dx);
                            }
                        },
                    );
                }
                // Only the leading layers take images: they are the segment, done below.
                Kind::Conv { .. } | Kind::Pool { .. } => {}
            }
            ws.bwd_secs[i] += t.elapsed().as_secs_f64();
        }
        if seg > 0 {
            backward_segment(&mut layers[..seg], out_lens, ws, in0, batch);
        }
    }

    /// Softmax cross-entropy of the logits of the last forward pass on `batch` samples against
    /// `ws.y`; writes d(mean loss)/d(logits). Returns (loss sum, correct count).
    pub(crate) fn loss_and_grad(&mut self, batch: usize) -> (f64, usize) {
        self.ensure_backward(batch);
        if let Some(g) = self.graph.as_mut() {
            return g.loss_and_grad(&self.ws.y, batch);
        }
        let last = self.layers.len() - 1;
        let c = self.classes;
        let (logits, dlogits) = (
            &self.ws.out[last][..batch * c],
            &mut self.ws.dout[last][..batch * c],
        );
        kernels::softmax_xent(logits, &self.ws.y[..batch], c, dlogits)
    }

    /// Makes training and evaluation batches through `pipeline` (per-channel standardization,
    /// random crop and flip: see [`lamb_data::InputPipeline`]); `None` restores plain 1/255
    /// scaling. Augmentation draws depend on the seed, the epoch and the image only, so a
    /// resumed run or another thread count sees the same batches.
    pub fn set_input_pipeline(&mut self, pipeline: Option<lamb_data::InputPipeline>) {
        self.input = pipeline.map(Box::new);
    }

    /// Fills the workspace with training batch `indices` of `data` (through the input
    /// pipeline, for epoch [`Model::input_epoch`], when one is set).
    pub(crate) fn fill_train(&mut self, data: &lamb_data::Dataset, indices: &[usize]) {
        let n = indices.len();
        let in_len = self.in_len();
        let (x, y) = (&mut self.ws.x[..n * in_len], &mut self.ws.y[..n]);
        match &self.input {
            Some(p) => p.fill_train_batch(data, indices, self.input_epoch, x, y),
            None => data.fill_batch(indices, x, y),
        }
    }

    /// Fills the workspace with evaluation batch `indices` of `data` (standardized when the
    /// input pipeline says so, never augmented).
    pub(crate) fn fill_eval(&mut self, data: &lamb_data::Dataset, indices: &[usize]) {
        let n = indices.len();
        let in_len = self.in_len();
        let (x, y) = (&mut self.ws.x[..n * in_len], &mut self.ws.y[..n]);
        match &self.input {
            Some(p) => p.fill_eval_batch(data, indices, x, y),
            None => data.fill_batch(indices, x, y),
        }
    }

    /// Numbers the next training forward passes from `n + 1` (the general engine seeds
    /// dropout masks with it).
    pub(crate) fn set_pass_counter(&mut self, n: u64) {
        if let Some(g) = self.graph.as_mut() {
            g.step = n;
        }
    }

    /// The regularisation losses of the layers (Keras `kernel_regularizer`; 0 for the fused
    /// engine's stacks, which have none).
    pub fn regularization_loss(&self) -> f64 {
        self.graph.as_ref().map_or(0.0, |g| g.regularization_loss())
    }

    /// The logits of the last forward pass on `batch` samples.
    pub(crate) fn logits(&self, batch: usize) -> &[f32] {
        match &self.graph {
            Some(g) => g.logits(batch),
            None => &self.ws.out[self.layers.len() - 1][..batch * self.classes],
        }
    }

    /// Resets the per-layer forward/backward timers.
    pub fn reset_timers(&mut self) {
        if let Some(g) = self.graph.as_mut() {
            g.fwd_secs.iter_mut().for_each(|t| *t = 0.0);
            g.bwd_secs.iter_mut().for_each(|t| *t = 0.0);
        }
        self.ws.fwd_secs.iter_mut().for_each(|t| *t = 0.0);
        self.ws.bwd_secs.iter_mut().for_each(|t| *t = 0.0);
    }

    /// Seconds spent per layer in (forward, backward) since the last [`Model::reset_timers`].
    pub fn layer_timers(&self) -> Vec<(String, f64, f64)> {
        let (f, b) = match &self.graph {
            Some(g) => (&g.fwd_secs, &g.bwd_secs),
            None => (&self.ws.fwd_secs, &self.ws.bwd_secs),
        };
        self.layer_names()
            .into_iter()
            .zip(f)
            .zip(b)
            .map(|((n, f), b)| (n, *f, *b))
            .collect()
    }
}

/// The layer whose output is layer `i`'s input, looking through Flatten layers (views of
/// their input, with no buffers of their own); `None`: the model's input.
fn source(layers: &[Layer], i: usize) -> Option<usize> {
    (0..i)
        .rev()
        .find(|&j| !matches!(layers[j].kind, Kind::Flatten))
}

/// Adds a segment's wall time to per-layer timers in proportion to the CPU time each layer
/// took inside the chunks (`per_chunk`: chunk-major, one value per layer and chunk; the layers
/// of a chunk interleave, so only this split is meaningful).
fn share_time(timers: &mut [f64], wall: f64, per_chunk: &[f64]) {
    let n = timers.len();
    let cpu = |i: usize| per_chunk.iter().skip(i).step_by(n).sum::<f64>();
    let total: f64 = (0..n).map(cpu).sum();
    if total > 0.0 {
        for (i, t) in timers.iter_mut().enumerate() {
            *t += wall * cpu(i) / total;
        }
    }
}

/// Zeroed per-chunk layer timers for `chunks` chunks of `seg` layers (in `secs`, reused).
fn chunk_timers(secs: &mut Vec<f64>, chunks: usize, seg: usize) -> &mut [f64] {
    secs.clear();
    secs.resize(chunks * seg, 0.0);
    secs
}

/// The first `batch` images of `buf` (`per_image` values each) in chunks of
/// [`kernels::CONV_CHUNK`] images.
fn chunks_of<T>(buf: &mut [T], per_image: usize, batch: usize) -> std::slice::ChunksMut<'_, T> {
    buf[..batch * per_image].chunks_mut(kernels::CONV_CHUNK * per_image)
}

/// Read-only [`chunks_of`].
fn chunks_of_ro<T>(buf: &[T], per_image: usize, batch: usize) -> std::slice::Chunks<'_, T> {
    buf[..batch * per_image].chunks(kernels::CONV_CHUNK * per_image)
}

/// Puts the `c`-th item of `chunks` at `list[c * seg + i]`: layer `i`'s slices in a
/// chunk-major list of `seg` slices per chunk of images.
fn place<S>(list: &mut [S], seg: usize, i: usize, chunks: impl Iterator<Item = S>) {
    for (slot, s) in list[i..].iter_mut().step_by(seg).zip(chunks) {
        *slot = s;
    }
}

/// Forward of the image segment `layers` (the model's first layers) over chunks of images.
/// A convolution whose output feeds a pooling ([`is_transient`]) writes it into the
/// chunk's scratch, where the pooling reads it (in cache); other outputs, and each pooling's
/// argmax, go to the workspace. Allocates nothing once the workspace has grown.
fn forward_segment(
    layers: &[Layer],
    out_lens: &[usize],
    ws: &mut Workspace,
    in0: usize,
    batch: usize,
) {
    let t0 = Instant::now();
    let seg = layers.len();
    let chunks = batch.div_ceil(kernels::CONV_CHUNK);
    ws.plan.update(layers, false);
    let SegmentPlan {
        transient,
        kinds,
        fused,
    } = &ws.plan;
    // Each chunk's slices of the layer outputs and pooling argmaxes, `seg` per chunk (empty
    // for transient outputs and layers without an argmax).
    let [outs_spare, args_spare, ..] = &mut ws.lists;
    let mut outs: Vec<&mut [f32]> = recycle(std::mem::take(outs_spare));
    let mut args: Vec<&mut [u8]> = recycle(std::mem::take(args_spare));
    outs.resize_with(chunks * seg, Default::default);
    args.resize_with(chunks * seg, Default::default);
    for (i, (out, arg)) in ws
        .out
        .iter_mut()
        .zip(ws.arg.iter_mut())
        .take(seg)
        .enumerate()
    {
        if !transient[i] {
            place(&mut outs, seg, i, chunks_of(out, out_lens[i], batch));
        }
        if stores_argmax(&layers[i]) {
            place(&mut args, seg, i, chunks_of(arg, out_lens[i], batch));
        }
    }
    let (cols_len, _) = scratch_lens(kinds, false);
    // The Winograd forward's weight layout, once per pass.
    ws.us.resize_with(seg, Vec::new);
    for ((l, kind), u) in layers.iter().zip(kinds).zip(&mut ws.us) {
        match *kind {
            Kind::Conv { g, filters, .. } => {
                kernels::winograd_weights_into(&g, filters, &l.params[0].value, u)
            }
            _ => u.clear(),
        }
    }
    let us = &ws.us;
    let t_len = (0..seg)
        .filter(|&i| transient[i])
        .map(|i| kernels::CONV_CHUNK * run_len(&kinds[i]))
        .max()
        .unwrap_or(0);
    ws.scratch.ensure(cols_len + t_len);
    let scratch = &ws.scratch;
    ws.x[..batch * in0]
        .par_chunks(kernels::CONV_CHUNK * in0)
        .zip(outs.par_chunks_mut(seg))
        .zip(args.par_chunks_mut(seg))
        .zip(chunk_timers(&mut ws.chunk_secs, chunks, seg).par_chunks_mut(seg))
        .for_each(|(((x, outs), args), secs)| {
            scratch.with(cols_len + t_len, |buf| {
                let (cols, tbuf) = buf.split_at_mut(cols_len);
                let imgs = x.len() / in0;
                for (i, l) in layers.iter().enumerate() {
                    if i > 0 && fused[i - 1] {
                        // Done with the convolution below.
                        continue;
                    }
                    let t = Instant::now();
                    let (prev, cur) = outs.split_at_mut(i);
                    if let (
                        true,
                        Kind::Conv {
                            g, filters, act, ..
                        },
                        Some(Kind::Pool { g: pg }),
                    ) = (fused[i], &kinds[i], kinds.get(i + 1))
                    {
                        let input: &[f32] = if i == 0 { x } else { &*prev[i - 1] };
                        kernels::conv_pool_forward_chunk(
                            g,
                            *filters,
                            *act,
                            &l.params[0].value,
                            &l.params[1].value,
                            input,
                            pg,
                            &mut *cur[1],
                            &mut *args[i + 1],
                        );
                        secs[i] += t.elapsed().as_secs_f64();
                        continue;
                    }
                    let arg = &mut *args[i];
                    if transient[i] {
                        // A convolution below a pooling: its input is never transient.
                        let input: &[f32] = if i == 0 { x } else { &*prev[i - 1] };
                        let out = &mut tbuf[..imgs * run_len(&kinds[i])];
                        let kind = without_pooled_act(&kinds[i]);
                        run_forward(l, &kind, &us[i], input, out, cols, arg);
                    } else {
                        let input: &[f32] = if i == 0 {
                            x
                        } else if transient[i - 1] {
                            &tbuf[..imgs * run_len(&kinds[i - 1])]
                        } else {
                            &*prev[i - 1]
                        };
                        run_forward(l, &kinds[i], &us[i], input, &mut *cur[0], cols, arg);
                        if i > 0 && transient[i - 1] {
                            if let Some(act) = pooled_act(&kinds[i - 1]) {
                                kernels::act_rows(&mut *cur[0], act);
                            }
                        }
                    }
                    secs[i] += t.elapsed().as_secs_f64();
                }
            })
        });
    *outs_spare = recycle(outs);
    *args_spare = recycle(args);
    share_time(
        &mut ws.fwd_secs[..seg],
        t0.elapsed().as_secs_f64(),
        &ws.chunk_secs,
    );
}

/// The activation of a transient convolution that runs after its pooling instead
/// ([`kernels::act_after_pool`]).
fn pooled_act(kind: &Kind) -> Option<Activation> {
    match *kind {
        Kind::Conv { act, .. } if kernels::act_after_pool(act) => Some(act),
        _ => None,
    }
}

/// `kind` without the activation that [`pooled_act`] moves past the pooling.
fn without_pooled_act(kind: &Kind) -> Kind {
    let mut k = kind.clone();
    if let (Kind::Conv { act, .. }, Some(_)) = (&mut k, pooled_act(kind)) {
        *act = Activation::Linear;
    }
    k
}

/// One image-segment layer's forward on a chunk of images, with the geometry of `kind` (`u`:
/// a convolution's [`kernels::winograd_weights`]).
fn run_forward(
    l: &Layer,
    kind: &Kind,
    u: &[f32],
    input: &[f32],
    out: &mut [f32],
    cols: &mut [f32],
    arg: &mut [u8],
) {
    match *kind {
        Kind::Conv {
            g, filters, act, ..
        } => kernels::conv_forward_chunk(
            &g,
            filters,
            act,
            &l.params[0].value,
            u,
            &l.params[1].value,
            input,
            cols,
            out,
        ),
        Kind::Pool { g } => {
            if stores_argmax(l) {
                kernels::maxpool_forward_arg(&g, input, out, arg)
            } else {
                kernels::maxpool_forward_chunk(&g, input, out)
            }
        }
        // `Model::image_segment` holds only convolutions and poolings.
        Kind::Flatten | Kind::Dense { .. } => {}
    }
}

/// Backward of the image segment `layers` over the same chunks as [`forward_segment`], from
/// the gradient in `ws.dout[layers.len() - 1]`. Every gradient inside the segment lives only
/// in the chunk's scratch (made and used by the same chunk, in cache). Allocates nothing once
/// the workspace has grown.
fn backward_segment(
    layers: &mut [Layer],
    out_lens: &[usize],
    ws: &mut Workspace,
    in0: usize,
    batch: usize,
) {
    let t0 = Instant::now();
    let seg = layers.len();
    let chunks = batch.div_ceil(kernels::CONV_CHUNK);
    let input_grad = ws.input_grad.is_some();
    ws.plan.update(layers, input_grad);
    let SegmentPlan {
        transient,
        kinds,
        fused,
    } = &ws.plan;
    // Per-chunk partial weight and bias gradients of each convolution, in chunk order (every
    // chunk overwrites its own).
    let mut parts = std::mem::take(&mut ws.parts);
    parts.resize_with(seg, Vec::new);
    for (kind, part) in kinds.iter().zip(parts.iter_mut()) {
        if let Kind::Conv { g, filters, .. } = kind {
            grow(part, chunks * kernels::conv_part_len(g, *filters));
        }
    }
    // Each chunk's slices of the partial gradients, stored layer outputs and pooling argmaxes,
    // `seg` per chunk (empty where a layer has none), and of the input gradient.
    let [parts_spare, args_spare, ys_spare, in_grads_spare] = &mut ws.lists;
    let mut part_slices: Vec<&mut [f32]> = recycle(std::mem::take(parts_spare));
    let mut args: Vec<&[u8]> = recycle(std::mem::take(args_spare));
    let mut ys: Vec<&[f32]> = recycle(std::mem::take(ys_spare));
    let mut in_grads: Vec<Option<&mut [f32]>> = recycle(std::mem::take(in_grads_spare));
    part_slices.resize_with(chunks * seg, Default::default);
    args.resize_with(chunks * seg, Default::default);
    ys.resize_with(chunks * seg, Default::default);
    for (i, (l, part)) in layers.iter().zip(parts.iter_mut()).enumerate() {
        if !transient[i] {
            place(
                &mut ys,
                seg,
                i,
                chunks_of_ro(&ws.out[i], out_lens[i], batch),
            );
        }
        if stores_argmax(l) {
            place(
                &mut args,
                seg,
                i,
                chunks_of_ro(&ws.arg[i], out_lens[i], batch),
            );
        }
        if let Kind::Conv { g, filters, .. } = &kinds[i] {
            let per_part = kernels::conv_part_len(g, *filters);
            place(
                &mut part_slices,
                seg,
                i,
                part[..chunks * per_part].chunks_mut(per_part),
            );
        }
    }
    match ws.input_grad.as_mut() {
        Some(g) => in_grads.extend(chunks_of(g, in0, batch).map(Some)),
        None => in_grads.resize_with(chunks, || None),
    }
    let (cols_len, dcols_len) = scratch_lens(kinds, input_grad);
    let d_len: usize = kinds[..seg - 1]
        .iter()
        .map(|k| kernels::CONV_CHUNK * run_len(k))
        .sum();
    // The input-gradient kernels' weight layout (direct or Winograd), once per step.
    // Winograd's come from the forward pass's transform of the same weights (`ws.us`).
    ws.wts.resize_with(seg, Vec::new);
    let layer_weights = layers.iter().zip(kinds).zip(&ws.us);
    for (i, (((l, kind), u), wt)) in layer_weights.zip(&mut ws.wts).enumerate() {
        match *kind {
            Kind::Conv { g, filters, .. } if i > 0 || input_grad => {
                kernels::dx_weights_into(&g, filters, &l.params[0].value, u, wt)
            }
            _ => wt.clear(),
        }
    }
    let wts = &ws.wts;
    ws.scratch.ensure(cols_len + dcols_len + d_len);
    let scratch = &ws.scratch;
    let layers_ro: &[Layer] = layers;
    let (ys_all, args_all) = (&ys, &args);
    let top = out_lens[seg - 1];
    ws.dout[seg - 1][..batch * top]
        .par_chunks_mut(kernels::CONV_CHUNK * top)
        .zip(ws.x[..batch * in0].par_chunks(kernels::CONV_CHUNK * in0))
        .zip(part_slices.par_chunks_mut(seg))
        .zip(in_grads.par_iter_mut())
        .zip(chunk_timers(&mut ws.chunk_secs, chunks, seg).par_chunks_mut(seg))
        .enumerate()
        .for_each(|(c, ((((dtop, x), parts), in_grad), secs))| {
            let ys = &ys_all[c * seg..][..seg];
            let args = &args_all[c * seg..][..seg];
            scratch.with(cols_len + dcols_len + d_len, |buf| {
                let (cols, rest) = buf.split_at_mut(cols_len);
                let (dcols, dbuf) = rest.split_at_mut(dcols_len);
                let imgs = dtop.len() / top;
                // The output gradient of each layer below the top: in the scratch, layer `i`'s
                // from `off(i)`.
                let off =
                    |i: usize| -> usize { kinds[..i].iter().map(|k| imgs * run_len(k)).sum() };
                // Set when a pooling layer already multiplied its input gradient by the
                // activation derivative of the convolution below it (fused).
                let mut act_done = false;
                for i in (0..seg).rev() {
                    if fused[i] {
                        // Done with the pooling above.
                        continue;
                    }
                    let t = Instant::now();
                    let l = &layers_ro[i];
                    let (dlow, dhigh) = dbuf.split_at_mut(off(i));
                    let dy: &mut [f32] = if i + 1 == seg {
                        &mut *dtop
                    } else {
                        &mut dhigh[..imgs * run_len(&kinds[i])]
                    };
                    if let (
                        true,
                        Kind::Conv {
                            g, filters, act, ..
                        },
                        Kind::Pool { g: pg },
                    ) = (
                        i > 0 && fused[i - 1],
                        &kinds[i.saturating_sub(1)],
                        &kinds[i],
                    ) {
                        // The pooling `i` and its convolution `i - 1`, fused.
                        let dx: Option<&mut [f32]> = if i == 1 {
                            in_grad.as_deref_mut()
                        } else {
                            Some(&mut dlow[off(i - 2)..off(i - 1)])
                        };
                        let input: &[f32] = if i == 1 { x } else { ys[i - 2] };
                        kernels::conv_pool_backward_chunk(
                            g,
                            *filters,
                            *act,
                            &wts[i - 1],
                            input,
                            pg,
                            ys[i],
                            args[i],
                            dy,
                            &mut *parts[i - 1],
                            dx,
                        );
                        secs[i - 1] += t.elapsed().as_secs_f64();
                        continue;
                    }
                    let dx: Option<&mut [f32]> = if i == 0 {
                        in_grad.as_deref_mut()
                    } else {
                        Some(&mut dlow[off(i - 1)..])
                    };
                    // The layer's input: stored unless it is a transient convolution output,
                    // which only a pooling with a stored argmax reads (and it does not need it).
                    let input: &[f32] = if i == 0 { x } else { ys[i - 1] };
                    let y = ys[i];
                    match kinds[i] {
                        Kind::Conv {
                            g, filters, act, ..
                        } => kernels::conv_backward_chunk(
                            &g,
                            filters,
                            act,
                            &l.params[0].value,
                            &wts[i],
                            input,
                            y,
                            dy,
                            &mut *cols,
                            &mut *parts[i],
                            dx.map(|dx| (dx, &mut *dcols)),
                            std::mem::take(&mut act_done),
                        ),
                        Kind::Pool { g } => {
                            let below = match layers_ro.get(i.wrapping_sub(1)).map(|l| &l.kind) {
                                Some(Kind::Conv { act, .. }) => Some(*act),
                                _ => None,
                            };
                            if let Some(dx) = dx {
                                if stores_argmax(l) {
                                    kernels::maxpool_backward_arg(&g, args[i], y, dy, below, dx);
                                } else {
                                    kernels::maxpool_backward_chunk(&g, input, y, dy, below, dx);
                                }
                                act_done = below.is_some();
                            }
                        }
                        // `Model::image_segment` holds only convolutions and poolings.
                        Kind::Flatten | Kind::Dense { .. } => {}
                    }
                    secs[i] += t.elapsed().as_secs_f64();
                }
            })
        });
    *parts_spare = recycle(part_slices);
    *args_spare = recycle(args);
    *ys_spare = recycle(ys);
    *in_grads_spare = recycle(in_grads);
    for ((l, part), kind) in layers.iter_mut().zip(&parts).zip(kinds) {
        if let Kind::Conv { g, filters, .. } = kind {
            let (kp, bp) = l.params.split_at_mut(1);
            let used = chunks * kernels::conv_part_len(g, *filters);
            kernels::sum_conv_partials(
                g,
                *filters,
                &part[..used],
                &mut ws.du,
                &mut kp[0].grad,
                &mut bp[0].grad,
            );
        }
    }
    ws.parts = parts;
    share_time(
        &mut ws.bwd_secs[..seg],
        t0.elapsed().as_secs_f64(),
        &ws.chunk_secs,
    );
}
