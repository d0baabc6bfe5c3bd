//! Model descriptions: Keras-style named layers with their configs and inbound layers (the
//! functional API; a stack is the simple case), read from the JSON that tf.keras 2.x
//! `model.to_json()` writes (Sequential and Functional; Keras 3's `inbound_nodes` form too),
//! built in Rust ([`ModelSpec::input`] and [`ModelSpec::layer`]) or built in
//! ([`ModelSpec::seed_cnn`], [`ModelSpec::resnet20`]), and written back as Keras JSON (the
//! description that travels with weights and runs).
//!
//! [`ModelSpec::build`] validates everything before allocating (unknown layers or options,
//! shapes that do not fit, cycles, two inputs, shared layers: errors naming the layer), then
//! chooses the engine: a stack the seed CNN's fused engine runs ([`crate::Sequential`]:
//! Conv2D/MaxPooling2D/Flatten/Dense with its initialisers and options) goes there, anything
//! else to the general graph engine ([`crate::graph`]).

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::graph::{GraphNet, Node, Src};
use crate::layers::{self, BuildCtx, Shape};
use crate::{Activation, Model, NnError, Padding, Sequential};

/// One layer of a description.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerSpec {
    pub name: String,
    pub class: String,
    pub config: Value,
    /// Names of the layers (or the input) it reads, in order.
    pub inbound: Vec<String>,
}

/// A model description (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub(crate) name: String,
    pub(crate) input_name: String,
    pub(crate) input_shape: [usize; 3],
    /// In topological order once validated (file order until then).
    pub(crate) layers: Vec<LayerSpec>,
    /// The output layer's name.
    pub(crate) output: String,
}

fn invalid(layer: &str, class: &str, message: impl Into<String>) -> NnError {
    NnError::InvalidLayer {
        layer: layer.to_string(),
        class: class.to_string(),
        message: message.into(),
    }
}

fn file_err(message: impl Into<String>) -> NnError {
    NnError::ModelFile(message.into())
}

/// The `[h, w, c]` of a `batch_input_shape` / `batch_shape` (`[null, h, w, c]`).
fn input_shape_of(cfg: &Value) -> Option<Result<[usize; 3], String>> {
    let v = cfg
        .get("batch_input_shape")
        .or_else(|| cfg.get("batch_shape"))
        .filter(|v| !v.is_null())?;
    let dims: Option<Vec<usize>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .skip(1)
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect()
        })
        .unwrap_or(None);
    Some(match dims.as_deref() {
        Some(&[h, w, c]) if h > 0 && w > 0 && c > 0 => Ok([h, w, c]),
        _ => Err(format!(
            "input shape {v}: expected [null, height, width, channels] with sizes at least 1"
        )),
    })
}

/// The layer names an `inbound_nodes` entry reads: Keras 2 (`[[["name", 0, 0, {}], ...]]`) or
/// Keras 3 (`[{"args": [...keras_history...]}]`). Refuses layers called more than once.
fn inbound_names(name: &str, class: &str, nodes: &Value) -> Result<Vec<String>, NnError> {
    let nodes = nodes.as_array().cloned().unwrap_or_default();
    match nodes.len() {
        0 => return Ok(Vec::new()),
        1 => {}
        n => {
            return Err(invalid(
                name,
                class,
                format!("called {n} times: shared layers are not supported"),
            ))
        }
    }
    let node = &nodes[0];
    let mut out = Vec::new();
    if let Some(list) = node.as_array() {
        for t in list {
            match t.as_array().map(|a| a.as_slice()) {
                Some([Value::String(n), idx, ..]) => {
                    if idx.as_u64() != Some(0) {
                        return Err(invalid(
                            name,
                            class,
                            format!("reads node {idx} of `{n}`: shared layers are not supported"),
                        ));
                    }
                    out.push(n.clone())
                }
                _ => return Err(invalid(name, class, format!("unreadable inbound node {t}"))),
            }
        }
    } else {
        // Keras 3: every `keras_history` = [name, node, tensor] inside the call's args.
        fn walk(v: &Value, out: &mut Vec<(String, Value)>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::Array(h)) = m.get("keras_history") {
                        if let Some(Value::String(n)) = h.first() {
                            out.push((n.clone(), h.get(1).cloned().unwrap_or(Value::Null)));
                            return;
                        }
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        walk(node.get("args").unwrap_or(node), &mut found);
        for (n, idx) in found {
            if idx.as_u64() != Some(0) {
                return Err(invalid(
                    name,
                    class,
                    format!("reads node {idx} of `{n}`: shared layers are not supported"),
                ));
            }
            out.push(n);
        }
    }
    Ok(out)
}

/// The single `[name, 0, 0]` of `input_layers` / `output_layers`.
fn single_endpoint(config: &Value, key: &str) -> Result<String, NnError> {
    let v = config.get(key).cloned().unwrap_or(Value::Null);
    let list: Vec<Value> = match &v {
        // Keras 3 writes a single endpoint unwrapped.
        Value::Array(a) if a.first().is_some_and(Value::is_string) => vec![v.clone()],
        Value::Array(a) => a.clone(),
        _ => return Err(file_err(format!("`{key}` missing or not a list: {v}"))),
    };
    match list.as_slice() {
        [one] => one
            .get(0)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| file_err(format!("`{key}` entry {one}: expected [name, 0, 0]"))),
        other => Err(file_err(format!(
            "{} {key}: models with one input and one output are supported",
            other.len()
        ))),
    }
}

impl ModelSpec {
    /// An empty description for inputs of `[h, w, c]` (the input layer is named `input_1`);
    /// add layers with [`ModelSpec::layer`].
    pub fn input(input_shape: [usize; 3]) -> Self {
        ModelSpec {
            name: "model".into(),
            input_name: "input_1".into(),
            input_shape,
            layers: Vec::new(),
            output: "input_1".into(),
        }
    }

    /// Adds a layer of Keras class `class` named `name` with the Keras `config` (options not
    /// given take Keras' defaults), reading the outputs of `inputs` (layer names, or the
    /// input's); it becomes the output. Returns its name, for chaining graphs. Validation
    /// happens in [`ModelSpec::build`].
    pub fn layer(&mut self, class: &str, name: &str, config: Value, inputs: &[&str]) -> String {
        let mut config = config;
        if let Value::Object(m) = &mut config {
            m.insert("name".into(), json!(name));
        }
        self.layers.push(LayerSpec {
            name: name.to_string(),
            class: class.to_string(),
            config,
            inbound: inputs.iter().map(|s| s.to_string()).collect(),
        });
        self.output = name.to_string();
        name.to_string()
    }

    /// Name of the input layer.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Reads a Keras model JSON (`model.to_json()`, Sequential or Functional).
    pub fn from_keras_json(text: &str) -> Result<Self, NnError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| file_err(format!("not valid JSON: {e}")))?;
        let class = root.get("class_name").and_then(Value::as_str).unwrap_or("");
        let config = root
            .get("config")
            .ok_or_else(|| file_err("no `config` object (expected model.to_json() output)"))?;
        let model_name = config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("model")
            .to_string();
        let entries = config
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| file_err("`config.layers` is missing or not a list"))?;
        let read = |e: &Value, i: usize| -> Result<(String, String, Value), NnError> {
            let class = e
                .get("class_name")
                .and_then(Value::as_str)
                .ok_or_else(|| file_err(format!("layer {i}: no `class_name`")))?;
            let cfg = e.get("config").cloned().unwrap_or(json!({}));
            let name = e
                .get("name")
                .or_else(|| cfg.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| file_err(format!("layer {i} ({class}): no `name`")))?;
            Ok((name.to_string(), class.to_string(), cfg))
        };
        match class {
            "Sequential" => {
                let mut spec = ModelSpec::input([0, 0, 0]);
                spec.name = model_name;
                let mut prev = String::new();
                for (i, e) in entries.iter().enumerate() {
                    let (name, class, cfg) = read(e, i)?;
                    if let Some(shape) = input_shape_of(&cfg) {
                        if spec.layers.is_empty() && spec.input_shape == [0, 0, 0] {
                            spec.input_shape = shape.map_err(|m| invalid(&name, &class, m))?;
                            if class == "InputLayer" {
                                spec.input_name = name.clone();
                                prev = name;
                                continue;
                            }
                            prev = spec.input_name.clone();
                        }
                    }
                    if class == "InputLayer" {
                        return Err(invalid(&name, &class, "an input layer inside the stack"));
                    }
                    if spec.input_shape == [0, 0, 0] {
                        return Err(invalid(&name, &class, "the first layer gives no input shape (`batch_input_shape`); the model must be built"));
                    }
                    spec.layers.push(LayerSpec {
                        name: name.clone(),
                        class,
                        config: cfg,
                        inbound: vec![prev.clone()],
                    });
                    prev = name;
                }
                spec.output = prev;
                Ok(spec)
            }
            "Functional" | "Model" => {
                let input = single_endpoint(config, "input_layers")?;
                let output = single_endpoint(config, "output_layers")?;
                let mut spec = ModelSpec::input([0, 0, 0]);
                spec.name = model_name;
                spec.input_name = input.clone();
                spec.output = output;
                for (i, e) in entries.iter().enumerate() {
                    let (name, class, cfg) = read(e, i)?;
                    if class == "InputLayer" {
                        if name != input {
                            return Err(invalid(&name, &class, format!(
                                "a second input (the model's input is `{input}`): models with one input are supported"
                            )));
                        }
                        let shape = input_shape_of(&cfg)
                            .unwrap_or_else(|| Err("no `batch_input_shape`".into()));
                        spec.input_shape = shape.map_err(|m| invalid(&name, &class, m))?;
                        continue;
                    }
                    let inbound = inbound_names(
                        &name,
                        &class,
                        e.get("inbound_nodes").unwrap_or(&Value::Null),
                    )?;
                    spec.layers.push(LayerSpec {
                        name,
                        class,
                        config: cfg,
                        inbound,
                    });
                }
                if spec.input_shape == [0, 0, 0] {
                    return Err(file_err(format!(
                        "the input layer `{input}` is not in `layers`"
                    )));
                }
                Ok(spec)
            }
            other => Err(file_err(format!(
                "model class `{other}` is not supported (supported: Sequential, Functional)"
            ))),
        }
    }

    /// The built-in model `name` (`seed-cnn`, with `hidden` activations, or `resnet20`), else
    /// the Keras JSON file at that path.
    pub fn named(name: &str, hidden: &str) -> Result<Self, NnError> {
        match name {
            "seed-cnn" => Ok(ModelSpec::seed_cnn(hidden)),
            "resnet20" => Ok(ModelSpec::resnet20()),
            path => {
                let p = Path::new(path);
                if !p.exists() {
                    return Err(NnError::InvalidArgument {
                        name: "model",
                        value: path.to_string(),
                        valid: "seed-cnn, resnet20, or the path of a Keras model JSON file (model.to_json())".into(),
                    });
                }
                ModelSpec::from_file(p)
            }
        }
    }

    /// The description stored in a weights file's metadata (`keras_model`, written by
    /// [`Model::save_safetensors`]); `Ok(None)` when the file has none.
    pub fn from_weights_file(path: &Path) -> Result<Option<Self>, NnError> {
        // Bounded: a FIFO, device or lying header is refused without reading it.
        let bytes = crate::files::read_safetensors(path)?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| NnError::Weights {
                path: path.to_path_buf(),
                message: format!("not a valid safetensors file: {e}"),
            })?;
        match meta.metadata().as_ref().and_then(|m| m.get("keras_model")) {
            None => Ok(None),
            Some(text) => {
                ModelSpec::from_keras_json(text)
                    .map(Some)
                    .map_err(|e| NnError::ModelFileAt {
                        path: path.to_path_buf(),
                        cause: Box::new(e),
                    })
            }
        }
    }

    /// The model's name (Keras' `config.name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`ModelSpec::from_keras_json`] of a file.
    pub fn from_file(path: &Path) -> Result<Self, NnError> {
        // Model files are small; a FIFO, device or huge file is refused without reading it.
        let bytes = lamb_data::read_capped(path, 64 << 20).map_err(|e| NnError::Io {
            action: "reading model file",
            path: path.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        let text = String::from_utf8(bytes).map_err(|e| NnError::ModelFileAt {
            path: path.to_path_buf(),
            cause: Box::new(NnError::ModelFile(format!("not UTF-8 text: {e}"))),
        })?;
        ModelSpec::from_keras_json(&text).map_err(|e| NnError::ModelFileAt {
            path: path.to_path_buf(),
            cause: Box::new(e),
        })
    }

    /// This description as Keras Functional JSON (what `model.to_json()` writes, with the
    /// fields this engine reads); [`ModelSpec::from_keras_json`] reads it back equal.
    pub fn to_keras_json(&self) -> String {
        let [h, w, c] = self.input_shape;
        let mut layers = vec![json!({
            "class_name": "InputLayer",
            "name": self.input_name,
            "config": {"batch_input_shape": [null, h, w, c], "dtype": "float32", "name": self.input_name},
            "inbound_nodes": [],
        })];
        for l in &self.layers {
            let inbound: Vec<Value> = l.inbound.iter().map(|n| json!([n, 0, 0, {}])).collect();
            layers.push(json!({
                "class_name": l.class,
                "name": l.name,
                "config": l.config,
                "inbound_nodes": [inbound],
            }));
        }
        let root = json!({
            "class_name": "Functional",
            "config": {
                "name": self.name,
                "layers": layers,
                "input_layers": [[self.input_name, 0, 0]],
                "output_layers": [[self.output, 0, 0]],
            },
            "keras_version": "2.15.0",
            "backend": "tensorflow",
        });
        serde_json::to_string(&root).expect("JSON values serialise")
    }

    /// Layer names in topological order (the input first), or an error naming a layer on a
    /// cycle, an unknown inbound layer, a duplicate name, or a layer the output does not
    /// depend on.
    fn topological(&self) -> Result<Vec<usize>, NnError> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            if l.name == self.input_name || index.insert(&l.name, i).is_some() {
                return Err(invalid(&l.name, &l.class, "a second layer with this name"));
            }
        }
        for l in &self.layers {
            if l.inbound.is_empty() {
                return Err(invalid(&l.name, &l.class, "reads no layer"));
            }
            for n in &l.inbound {
                if *n != self.input_name && !index.contains_key(n.as_str()) {
                    return Err(invalid(
                        &l.name,
                        &l.class,
                        format!("reads `{n}`, which is not a layer of the model"),
                    ));
                }
            }
        }
        let out = *index.get(self.output.as_str()).ok_or_else(|| {
            file_err(format!(
                "the output `{}` is not a layer of the model",
                self.output
            ))
        })?;
        // Depth-first from the output; grey = on the current path (a cycle if met again).
        let mut mark = vec![0u8; self.layers.len()];
        let mut order = Vec::new();
        fn visit(
            s: &ModelSpec,
            index: &HashMap<&str, usize>,
            i: usize,
            mark: &mut [u8],
            order: &mut Vec<usize>,
        ) -> Result<(), NnError> {
            match mark[i] {
                2 => return Ok(()),
                1 => {
                    let l = &s.layers[i];
                    return Err(invalid(&l.name, &l.class, "is part of a cycle"));
                }
                _ => {}
            }
            mark[i] = 1;
            for n in &s.layers[i].inbound {
                if let Some(&j) = index.get(n.as_str()) {
                    visit(s, index, j, mark, order)?;
                }
            }
            mark[i] = 2;
            order.push(i);
            Ok(())
        }
        visit(self, &index, out, &mut mark, &mut order)?;
        if let Some(i) = mark.iter().position(|m| *m == 0) {
            let l = &self.layers[i];
            return Err(invalid(
                &l.name,
                &l.class,
                format!(
                    "does not lead to the output `{}` (a second output, or a dead branch)",
                    self.output
                ),
            ));
        }
        Ok(order)
    }

    /// Validates the description and builds the model, initialisers drawn from a ChaCha8
    /// generator seeded with `seed` (the fused engine's stacks draw as [`Sequential::build`]).
    pub fn build(&self, seed: u64) -> Result<Model, NnError> {
        self.build_with(seed, true)
    }

    /// [`ModelSpec::build`] with every general-engine node run as described, no activation
    /// absorbed into the layer below (tests compare the two).
    #[cfg(test)]
    pub(crate) fn build_unfused(&self, seed: u64) -> Result<Model, NnError> {
        self.build_with(seed, false)
    }

    fn build_with(&self, seed: u64, fuse: bool) -> Result<Model, NnError> {
        let [h, w, c] = self.input_shape;
        if h == 0 || w == 0 || c == 0 {
            return Err(file_err(format!(
                "input shape {:?}: every size must be at least 1",
                self.input_shape
            )));
        }
        let order = self.topological()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut shapes: HashMap<&str, (Shape, Option<usize>)> = HashMap::new();
        shapes.insert(&self.input_name, (self.input_shape.to_vec(), None));
        let mut nodes: Vec<Node> = Vec::with_capacity(order.len());
        for &i in &order {
            let l = &self.layers[i];
            let build = layers::builder(&l.class).ok_or_else(|| {
                let nested = matches!(l.class.as_str(), "Functional" | "Sequential" | "Model");
                invalid(
                    &l.name,
                    &l.class,
                    if nested {
                        "nested models are not supported".to_string()
                    } else {
                        format!("unknown layer (supported: {})", layers::supported())
                    },
                )
            })?;
            let mut ins: Vec<Shape> = Vec::new();
            let mut srcs = Vec::new();
            for n in &l.inbound {
                let (s, src) = &shapes[n.as_str()];
                ins.push(s.clone());
                srcs.push(src.map_or(Src::Input, Src::Node));
            }
            let mut ctx = BuildCtx {
                name: &l.name,
                config: &l.config,
                inputs: &ins,
                rng: &mut rng,
            };
            let layer = build(&mut ctx).map_err(|m| invalid(&l.name, &l.class, m))?;
            let shape = layer.output_shape().clone();
            shapes.insert(&l.name, (shape.clone(), Some(nodes.len())));
            nodes.push(Node {
                name: l.name.clone(),
                layer,
                inputs: srcs,
                out_len: shape.iter().product(),
            });
        }
        let last = nodes
            .last_mut()
            .ok_or_else(|| file_err("the model has no layers"))?;
        let classes = match last.layer.output_shape()[..] {
            [n] if n >= 2 => n,
            ref s => {
                let l = &self.layers[*order.last().expect("a layer")];
                return Err(invalid(&l.name, &l.class, format!(
                    "the output has shape {s:?}; a classifier's output is (classes), at least 2, its softmax applied by the loss"
                )));
            }
        };
        last.layer.strip_softmax();
        let mut topo = self.clone();
        topo.layers = order.iter().map(|&i| self.layers[i].clone()).collect();
        if let Some(seq) = topo.fused_stack()? {
            let mut m = seq.build(seed)?;
            m.spec = Some(topo);
            return Ok(m);
        }
        let net = GraphNet::with_fusion(topo.clone(), nodes, self.input_shape.to_vec(), fuse);
        Ok(Model::from_graph(net, self.input_shape, classes, topo))
    }

    /// The description as a [`Sequential`] for the fused engine, when it is a stack that
    /// engine runs exactly as described (its layer kinds, options, initialisers and default
    /// names); `None` otherwise. Called on a validated, topologically ordered description.
    fn fused_stack(&self) -> Result<Option<Sequential>, NnError> {
        let mut seq = Sequential::new(self.input_shape);
        let mut prev = self.input_name.as_str();
        let mut counters: HashMap<&str, usize> = HashMap::new();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            if l.inbound != [prev] {
                return Ok(None);
            }
            prev = &l.name;
            let cfg = &l.config;
            let s = |k: &str, d: &str| cfg.get(k).and_then(Value::as_str).unwrap_or(d).to_string();
            let plain = |k: &str| cfg.get(k).filter(|v| !v.is_null()).is_none();
            let glorot = ["GlorotUniform", "glorot_uniform"].contains(
                &cfg.get("kernel_initializer")
                    .and_then(|v| v.get("class_name").or(Some(v)))
                    .and_then(Value::as_str)
                    .unwrap_or("GlorotUniform"),
            );
            let zeros = ["Zeros", "zeros"].contains(
                &cfg.get("bias_initializer")
                    .and_then(|v| v.get("class_name").or(Some(v)))
                    .and_then(Value::as_str)
                    .unwrap_or("Zeros"),
            );
            let act = match s("activation", "linear").as_str() {
                "relu" => Activation::Relu,
                "selu" => Activation::Selu,
                "linear" => Activation::Linear,
                "softmax" if i + 1 == n && l.class == "Dense" => Activation::Softmax,
                _ => return Ok(None),
            };
            let bias = cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true);
            let pair = |k: &str, d: usize| -> Option<usize> {
                match cfg.get(k) {
                    None | Some(Value::Null) => Some(d),
                    Some(v) => match v.as_array().map(|a| a.as_slice()) {
                        Some([a, b]) if a == b => a.as_u64().map(|x| x as usize),
                        _ => v.as_u64().map(|x| x as usize),
                    },
                }
            };
            let base = match l.class.as_str() {
                "Conv2D" => {
                    let (Some(k), Some(st)) = (pair("kernel_size", 0), pair("strides", 1)) else {
                        return Ok(None);
                    };
                    let padding = match s("padding", "valid").as_str() {
                        "valid" => Padding::Valid,
                        _ => Padding::Same,
                    };
                    if !glorot || !zeros || !bias || !plain("kernel_regularizer") {
                        return Ok(None);
                    }
                    let f = cfg.get("filters").and_then(Value::as_u64).unwrap_or(0) as usize;
                    seq = seq.conv2d(f, k, st, padding, act);
                    "conv2d"
                }
                "MaxPooling2D" => {
                    let (Some(p), Some(st)) = (pair("pool_size", 2), pair("strides", 0)) else {
                        return Ok(None);
                    };
                    if (st != 0 && st != p) || s("padding", "valid") != "valid" {
                        return Ok(None);
                    }
                    seq = seq.max_pool2d(p);
                    "max_pooling2d"
                }
                "Flatten" => {
                    seq = seq.flatten();
                    "flatten"
                }
                "Dense" => {
                    if !glorot || !zeros || !bias || !plain("kernel_regularizer") {
                        return Ok(None);
                    }
                    let u = cfg.get("units").and_then(Value::as_u64).unwrap_or(0) as usize;
                    seq = seq.dense(u, act);
                    "dense"
                }
                _ => return Ok(None),
            };
            if !matches!(l.class.as_str(), "Conv2D" | "Dense") && act != Activation::Linear {
                return Ok(None);
            }
            let k = counters.entry(base).or_insert(0);
            let want = if *k == 0 {
                base.to_string()
            } else {
                format!("{base}_{k}")
            };
            *k += 1;
            if l.name != want {
                return Ok(None);
            }
        }
        match self.layers.last() {
            Some(l) if l.class == "Dense" => Ok(Some(seq)),
            _ => Ok(None),
        }
    }

    /// The classic experiment's seed CNN (see [`crate::classic_cnn`]) with `hidden` ("relu"
    /// or "selu") activations, as Keras describes it.
    pub fn seed_cnn(hidden: &str) -> Self {
        let mut s = ModelSpec::input([32, 32, 3]);
        s.name = "sequential".into();
        s.input_name = "conv2d_input".into();
        let conv = |f: usize| json!({"filters": f, "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid", "activation": hidden});
        let pool = json!({"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"});
        let a = s.layer("Conv2D", "conv2d", conv(32), &["conv2d_input"]);
        let a = s.layer("MaxPooling2D", "max_pooling2d", pool.clone(), &[&a]);
        let a = s.layer("Conv2D", "conv2d_1", conv(64), &[&a]);
        let a = s.layer("MaxPooling2D", "max_pooling2d_1", pool, &[&a]);
        let a = s.layer("Flatten", "flatten", json!({}), &[&a]);
        s.layer(
            "Dense",
            "dense",
            json!({"units": 10, "activation": "softmax"}),
            &[&a],
        );
        s
    }

    /// ResNet-20 v1 of the Keras CIFAR-10 example (`resnet_v1`, depth 20): 3x3 convolutions
    /// (he_normal, L2 1e-4, `same`), BatchNormalization, ReLU, three stages of 16, 32 and 64
    /// filters with residual Adds (1x1 stride-2 projections where the shape changes),
    /// AveragePooling2D 8, Flatten, Dense 10 softmax (he_normal): 274,442 values with the BN
    /// statistics. Layer names as Keras gives them (identical to `resnet20.json`).
    pub fn resnet20() -> Self {
        let mut s = ModelSpec::input([32, 32, 3]);
        // Layers made so far of each kind, for Keras' default names.
        let (mut n_conv, mut n_bn, mut n_add) = (0, 0, 0);
        let n_act = std::cell::Cell::new(0usize);
        let act_name = || {
            let k = n_act.get();
            n_act.set(k + 1);
            if k == 0 {
                "activation".to_string()
            } else {
                format!("activation_{k}")
            }
        };
        let next = |base: &str, k: &mut usize| {
            let n = if *k == 0 {
                base.to_string()
            } else {
                format!("{base}_{k}")
            };
            *k += 1;
            n
        };
        let he = json!({"class_name": "HeNormal", "config": {"seed": null}});
        let l2 = json!({"class_name": "L2", "config": {"l2": 1e-4_f32 as f64}});
        // resnet_layer: conv -> BN -> (relu); returns the output name.
        let mut layer = |s: &mut ModelSpec,
                         input: &str,
                         filters: usize,
                         k: usize,
                         stride: usize,
                         bn: bool,
                         relu: bool| {
            let cfg = json!({
                "filters": filters, "kernel_size": [k, k], "strides": [stride, stride],
                "padding": "same", "activation": "linear", "use_bias": true,
                "kernel_initializer": he, "bias_initializer": {"class_name": "Zeros", "config": {}},
                "kernel_regularizer": l2,
            });
            let mut x = s.layer("Conv2D", &next("conv2d", &mut n_conv), cfg, &[input]);
            if bn {
                let cfg = json!({"axis": [3], "momentum": 0.99, "epsilon": 0.001, "center": true, "scale": true});
                x = s.layer(
                    "BatchNormalization",
                    &next("batch_normalization", &mut n_bn),
                    cfg,
                    &[&x],
                );
            }
            if relu {
                x = s.layer(
                    "Activation",
                    &act_name(),
                    json!({"activation": "relu"}),
                    &[&x],
                );
            }
            x
        };
        let input = s.input_name.clone();
        let mut x = layer(&mut s, &input, 16, 3, 1, true, true);
        let mut filters = 16;
        for stage in 0..3 {
            for block in 0..3 {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let y = layer(&mut s, &x, filters, 3, stride, true, true);
                let y = layer(&mut s, &y, filters, 3, 1, true, false);
                if stage > 0 && block == 0 {
                    x = layer(&mut s, &x, filters, 1, stride, false, false);
                }
                let sum = s.layer("Add", &next("add", &mut n_add), json!({}), &[&x, &y]);
                x = s.layer(
                    "Activation",
                    &act_name(),
                    json!({"activation": "relu"}),
                    &[&sum],
                );
            }
            filters *= 2;
        }
        let x = s.layer(
            "AveragePooling2D",
            "average_pooling2d",
            json!({"pool_size": [8, 8], "strides": [8, 8], "padding": "valid"}),
            &[&x],
        );
        let x = s.layer("Flatten", "flatten", json!({}), &[&x]);
        s.layer(
            "Dense",
            "dense",
            json!({"units": 10, "activation": "softmax", "kernel_initializer": he}),
            &[&x],
        );
        s
    }
}
