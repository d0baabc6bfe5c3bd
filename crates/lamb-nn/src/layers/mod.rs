//! The open layer set of the general engine. A layer is one module here: its Keras class
//! name, how it reads its Keras config (options it does not support are refused by name), its
//! shape rule, parameters and non-trainable state with their initialisers, and its forward and
//! backward passes over NHWC (or flat) f32 batches. [`REGISTRY`] lists them, one line each.
//!
//! The model ([`crate::graph`]) walks a graph of such layers; nothing outside this module
//! names a layer kind. The fused fast paths of the seed CNN live in [`crate::model`] and are
//! chosen by [`crate::spec`] where their pattern appears.

mod activation;
mod add;
mod batch_norm;
pub(crate) mod config;
mod conv2d;
mod dense;
mod dropout;
mod flatten;
mod global_pooling;
pub(crate) mod init;
mod pooling;

use std::fmt::Debug;

use rand_chacha::ChaCha8Rng;
use serde_json::Value;

pub(crate) use activation::ActFn;

use crate::model::Param;

/// Per-sample shape of a layer's output: `[h, w, c]` for images, `[n]` for flat vectors.
pub(crate) type Shape = Vec<usize>;

/// What a layer builder gets: its name, Keras config, the shapes of its inputs and the
/// generator for its initialisers (drawn in model order).
pub(crate) struct BuildCtx<'a> {
    pub name: &'a str,
    pub config: &'a Value,
    pub inputs: &'a [Shape],
    pub rng: &'a mut ChaCha8Rng,
}

/// Builds a layer from its Keras config; `Err` says what is wrong and what is valid.
pub(crate) type Builder = fn(&mut BuildCtx<'_>) -> Result<Box<dyn Layer>, String>;

/// Every layer the general engine knows, by Keras class name: one line per layer module.
pub(crate) const REGISTRY: &[(&str, Builder)] = &[
    ("Conv2D", conv2d::build),
    ("Dense", dense::build),
    ("MaxPooling2D", pooling::build_max),
    ("AveragePooling2D", pooling::build_average),
    ("GlobalAveragePooling2D", global_pooling::build),
    ("Flatten", flatten::build),
    ("Dropout", dropout::build),
    ("Activation", activation::build),
    ("BatchNormalization", batch_norm::build),
    ("Add", add::build),
];

/// The builder of Keras class `class`, if the engine supports it.
pub(crate) fn builder(class: &str) -> Option<Builder> {
    REGISTRY.iter().find(|(c, _)| *c == class).map(|(_, b)| *b)
}

/// Comma-separated list of the supported Keras classes (for errors).
pub(crate) fn supported() -> String {
    let mut v: Vec<&str> = REGISTRY.iter().map(|(c, _)| *c).collect();
    v.push("InputLayer");
    v.join(", ")
}

/// Scratch buffers shared by all layers of a model (reused across steps; they only grow).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// im2col blocks of convolutions.
    pub cols: Vec<f32>,
    /// `dcols` blocks of convolution input gradients.
    pub dcols: Vec<f32>,
    /// The gradient w.r.t. a convolution's zero-padded input (direct kernels on `same`
    /// padding; the padded input itself is the layer's own).
    pub dpadded: Vec<f32>,
}

/// Whether a pass trains (batch statistics, dropout active) or evaluates, and the step
/// counter that seeds dropout masks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass {
    pub training: bool,
    pub step: u64,
}

/// One layer of the general engine (see the module doc). Buffers a layer keeps between its
/// forward and backward pass (masks, normalised inputs) are its own.
pub(crate) trait Layer: Debug + Send + Sync {
    /// Keras class name (`Conv2D`, ...).
    fn class(&self) -> &'static str;
    /// Per-sample output shape (fixed at build time from the input shapes).
    fn output_shape(&self) -> &Shape;
    /// Trainable parameters, in Keras order.
    fn params(&self) -> &[Param] {
        &[]
    }
    /// Mutable [`Layer::params`].
    fn params_mut(&mut self) -> &mut [Param] {
        &mut []
    }
    /// Non-trainable state (BatchNormalization's moving statistics); `grad` is empty.
    fn state(&self) -> &[Param] {
        &[]
    }
    /// Mutable [`Layer::state`].
    fn state_mut(&mut self) -> &mut [Param] {
        &mut []
    }
    /// If the layer ends in a softmax, drops it (the model's loss applies it to the logits)
    /// and returns true.
    fn strip_softmax(&mut self) -> bool {
        false
    }
    /// Forward on `batch` samples: `inputs` (one slice per inbound layer) into `out`.
    fn forward(
        &mut self,
        pass: Pass,
        inputs: &[&[f32]],
        out: &mut [f32],
        batch: usize,
        scratch: &mut Scratch,
    );
    /// Backward after [`Layer::forward`] of the same batch: `dy` (may be overwritten) is the
    /// gradient w.r.t. `out`; fills parameter gradients (overwriting them) and, for each
    /// input with `Some`, its gradient (overwritten).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        inputs: &[&[f32]],
        out: &[f32],
        dy: &mut [f32],
        dx: &mut [Option<&mut [f32]>],
        batch: usize,
        scratch: &mut Scratch,
    );
    /// The regularisation loss this layer adds (Keras `kernel_regularizer`), after adding its
    /// gradient to the parameter gradients (called after [`Layer::backward`]).
    fn add_regularization(&mut self) -> f64 {
        0.0
    }
    /// The regularisation loss alone (evaluation).
    fn regularization_loss(&self) -> f64 {
        0.0
    }
    /// The activation this layer is, when it is a plain Keras `Activation` layer (the graph
    /// then may let the layer below apply it, see [`Layer::fuse_activation`]).
    fn as_activation(&self) -> Option<ActFn> {
        None
    }
    /// Asks the layer to apply `act` to its output itself, in forward (on its output) and
    /// backward (multiplying `dy` by the derivative from its output), as the separate
    /// `Activation` layer it replaces would, bit for bit. Returns whether it does (then it
    /// always does). Called only when the activation is the layer's only reader.
    fn fuse_activation(&mut self, act: ActFn) -> bool {
        let _ = act;
        false
    }
    /// The dropout mask of the last training pass (gradient tests).
    #[cfg(test)]
    fn test_mask(&self) -> Option<&[f32]> {
        None
    }
}

/// The single image input shape of a layer, or an error naming what it got.
pub(crate) fn one_image(inputs: &[Shape]) -> Result<[usize; 3], String> {
    match inputs {
        [s] => match s[..] {
            [h, w, c] => Ok([h, w, c]),
            _ => Err(format!("needs an image input (h, w, c), got {s:?}")),
        },
        _ => Err(format!("takes one input, got {}", inputs.len())),
    }
}

/// The single input shape of a layer.
pub(crate) fn one_input(inputs: &[Shape]) -> Result<&Shape, String> {
    match inputs {
        [s] => Ok(s),
        _ => Err(format!("takes one input, got {}", inputs.len())),
    }
}
