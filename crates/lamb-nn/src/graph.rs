//! The general engine: a graph of named layers ([`crate::layers`]) in topological order, one
//! input (the model's images) and one output (the logits: a final softmax is left to the
//! loss). Forward runs the nodes in order; backward runs them in reverse, the gradient of a
//! layer read by several others summed in a fixed order (so no bit depends on the thread
//! count). Buffers only grow (to the largest batch seen); once they have, a step allocates
//! nothing.
//!
//! A ReLU `Activation` that is the only reader of a layer able to apply it
//! ([`Layer::fuse_activation`]: BatchNormalization, Add), and not the model's output, is run
//! by that layer: the activation
//! node is skipped in both passes and its readers read the layer's output, which saves the
//! activation's passes over memory and gives the same bits.
//!
//! The seam for a second backend (device-resident tensors) is [`crate::layers::Layer`]: its
//! passes take and return plain host slices today; a device backend would implement the same
//! trait over its own buffers and replace the buffer management here.

use std::time::Instant;

use smallvec::SmallVec;

use crate::kernels;
use crate::layers::{Layer, Pass, Scratch, Shape};
use crate::model::Param;
use crate::ModelSpec;

/// A node's input slices (inline for up to four inputs: no allocation per pass).
type Inputs<'a> = SmallVec<[&'a [f32]; 4]>;

/// Where a node's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    /// The model's input images.
    Input,
    /// The output of node `i` (an earlier node).
    Node(usize),
}

/// One layer in the graph with its inbound connections.
#[derive(Debug)]
pub(crate) struct Node {
    pub name: String,
    pub layer: Box<dyn Layer>,
    pub inputs: Vec<Src>,
    /// Values per sample of the output.
    pub out_len: usize,
}

/// A built graph with its work buffers.
#[derive(Debug)]
pub(crate) struct GraphNet {
    /// The description it was built from (topological order).
    pub spec: ModelSpec,
    pub nodes: Vec<Node>,
    pub input_shape: Shape,
    /// Per node, where its inputs are read: [`Node::inputs`] with every absorbed activation
    /// replaced by the layer that applies it.
    reads: Vec<Vec<Src>>,
    /// Per node, whether it is an activation applied by the layer below it (skipped).
    absorbed: Vec<bool>,
    /// Per node, values per sample of its output ([`Node::out_len`]).
    out_lens: Vec<usize>,
    /// Per node, during backward: whether its output gradient holds a contribution yet.
    has: Vec<bool>,
    outs: Vec<Vec<f32>>,
    /// Output gradients, each held (from the pool) only from its first contribution until its
    /// node's backward is done: a few at a time, not one per node.
    douts: Vec<Vec<f32>>,
    /// Spare gradient buffers (the output gradients' pool, and the temporaries that hold a
    /// gradient another reader already contributed to, summed after).
    tmps: Vec<Vec<f32>>,
    scratch: Scratch,
    /// Training forward passes run, or as numbered by `fit` (seeds dropout masks).
    pub step: u64,
    cap: usize,
    pub fwd_secs: Vec<f64>,
    pub bwd_secs: Vec<f64>,
    /// When `Some`, backward also computes the gradient w.r.t. the input (tests).
    pub input_grad: Option<Vec<f32>>,
}

impl Clone for GraphNet {
    /// Built again from the description, with the same parameter and state values (work
    /// buffers start empty).
    fn clone(&self) -> Self {
        let mut m = self
            .spec
            .build(0)
            .expect("a description that built once builds again");
        let mut g = *m
            .graph
            .take()
            .expect("a general-engine description builds a graph");
        for (d, s) in g.params_mut().zip(self.params()) {
            d.value.copy_from_slice(&s.value);
        }
        for (d, s) in g.state_mut().zip(self.state()) {
            d.value.copy_from_slice(&s.value);
        }
        g.step = self.step;
        g
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl GraphNet {
    /// A graph of `nodes` (topological order, the last the output) on inputs of
    /// `input_shape`; with `fuse`, ReLU activations are absorbed into the layer below where
    /// it can apply them (see the module doc), else every node runs as described.
    pub fn with_fusion(
        spec: ModelSpec,
        mut nodes: Vec<Node>,
        input_shape: Shape,
        fuse: bool,
    ) -> Self {
        let n = nodes.len();
        let mut reads: Vec<Vec<Src>> = nodes.iter().map(|n| n.inputs.clone()).collect();
        let mut absorbed = vec![false; n];
        for j in 0..n.saturating_sub(1) {
            let (Some(act), [Src::Node(i)]) =
                (nodes[j].layer.as_activation(), &nodes[j].inputs[..])
            else {
                continue;
            };
            let i = *i;
            let only_reader = nodes
                .iter()
                .enumerate()
                .all(|(k, m)| k == j || !m.inputs.contains(&Src::Node(i)));
            if fuse && only_reader && !absorbed[i] && nodes[i].layer.fuse_activation(act) {
                absorbed[j] = true;
                for r in reads.iter_mut().flatten() {
                    if *r == Src::Node(j) {
                        *r = Src::Node(i);
                    }
                }
            }
        }
        GraphNet {
            spec,
            out_lens: nodes.iter().map(|n| n.out_len).collect(),
            has: vec![false; n],
            nodes,
            input_shape,
            reads,
            absorbed,
            outs: vec![Vec::new(); n],
            douts: vec![Vec::new(); n],
            tmps: Vec::new(),
            scratch: Scratch::default(),
            step: 0,
            cap: 0,
            fwd_secs: vec![0.0; n],
            bwd_secs: vec![0.0; n],
            input_grad: None,
        }
    }

    /// How many activation nodes are absorbed into the layer below (tests).
    #[cfg(test)]
    pub fn absorbed_count(&self) -> usize {
        self.absorbed.iter().filter(|a| **a).count()
    }

    fn in_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Grows the buffers for `batch` samples.
    pub fn ensure(&mut self, batch: usize) {
        if batch <= self.cap {
            return;
        }
        for ((node, o), &skip) in self
            .nodes
            .iter()
            .zip(self.outs.iter_mut())
            .zip(&self.absorbed)
        {
            if !skip {
                grow(o, batch * node.out_len);
            }
        }
        if let Some(g) = self.input_grad.as_mut() {
            let n = batch * self.input_shape.iter().product::<usize>();
            grow(g, n);
        }
        self.cap = batch;
    }

    /// Trainable parameters, in model order.
    pub fn params(&self) -> impl Iterator<Item = &Param> {
        self.nodes.iter().flat_map(|n| n.layer.params())
    }

    /// Mutable [`GraphNet::params`].
    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.nodes.iter_mut().flat_map(|n| n.layer.params_mut())
    }

    /// Non-trainable state tensors, in model order.
    pub fn state(&self) -> impl Iterator<Item = &Param> {
        self.nodes.iter().flat_map(|n| n.layer.state())
    }

    /// Mutable [`GraphNet::state`].
    pub fn state_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.nodes.iter_mut().flat_map(|n| n.layer.state_mut())
    }

    /// The output (logits) of the last forward pass on `batch` samples.
    pub fn logits(&self, batch: usize) -> &[f32] {
        let last = self.nodes.len() - 1;
        &self.outs[last][..batch * self.nodes[last].out_len]
    }

    /// Forward pass on `x` (`batch` samples); `training`: batch statistics, dropout.
    pub fn forward(&mut self, x: &[f32], batch: usize, training: bool) {
        self.ensure(batch);
        if training {
            self.step += 1;
        }
        let pass = Pass {
            training,
            step: self.step,
        };
        let x = &x[..batch * self.in_len()];
        let GraphNet {
            nodes,
            outs,
            scratch,
            fwd_secs,
            reads,
            absorbed,
            out_lens: lens,
            ..
        } = self;
        for (i, node) in nodes.iter_mut().enumerate() {
            if absorbed[i] {
                continue;
            }
            let t = Instant::now();
            let (done, rest) = outs.split_at_mut(i);
            let ins: Inputs<'_> = reads[i]
                .iter()
                .map(|s| match *s {
                    Src::Input => x,
                    Src::Node(j) => &done[j][..batch * lens[j]],
                })
                .collect();
            let out = &mut rest[0][..batch * node.out_len];
            node.layer.forward(pass, &ins, out, batch, scratch);
            fwd_secs[i] += t.elapsed().as_secs_f64();
        }
    }

    /// Softmax cross-entropy of the logits against `y`, plus the layers' regularisation
    /// losses (`batch` times, as the sum is divided by the batch later); writes
    /// d(mean loss)/d(logits). Returns (loss sum, correct count).
    pub fn loss_and_grad(&mut self, y: &[u8], batch: usize) -> (f64, usize) {
        let last = self.nodes.len() - 1;
        let c = self.nodes[last].out_len;
        if self.douts[last].is_empty() {
            self.douts[last] = self.tmps.pop().unwrap_or_default();
        }
        grow(&mut self.douts[last], batch * c);
        let (loss, correct) = kernels::softmax_xent(
            &self.outs[last][..batch * c],
            &y[..batch],
            c,
            &mut self.douts[last][..batch * c],
        );
        (loss + self.regularization_loss() * batch as f64, correct)
    }

    /// The layers' regularisation losses (Keras `kernel_regularizer`), summed in layer order.
    pub fn regularization_loss(&self) -> f64 {
        self.nodes
            .iter()
            .map(|n| n.layer.regularization_loss())
            .sum()
    }

    /// Backward pass after [`GraphNet::forward`] on `x` and [`GraphNet::loss_and_grad`]:
    /// every parameter gradient, plus the regularisers' gradients.
    pub fn backward(&mut self, x: &[f32], batch: usize) {
        let in_len = self.in_len();
        let x = &x[..batch * in_len];
        let n = self.nodes.len();
        // Whether node j's output gradient already holds a contribution of this pass.
        let mut has = std::mem::take(&mut self.has);
        has.fill(false);
        has[n - 1] = true;
        let mut input_grad = self.input_grad.take();
        let mut input_has = false;
        for i in (0..n).rev() {
            if self.absorbed[i] {
                continue;
            }
            let t = Instant::now();
            if !has[i] {
                // Nothing above reads this node (only possible for dead branches).
                let mut d = self.tmps.pop().unwrap_or_default();
                grow(&mut d, batch * self.nodes[i].out_len);
                d[..batch * self.nodes[i].out_len].fill(0.0);
                self.douts[i] = d;
            }
            let mut dy = std::mem::take(&mut self.douts[i]);
            let srcs: SmallVec<[Src; 4]> = self.reads[i].iter().copied().collect();
            // Targets: the source's own buffer for its first contribution, else a temporary.
            let mut direct: SmallVec<[Option<Vec<f32>>; 4]> = SmallVec::new();
            let mut temps: SmallVec<[Option<Vec<f32>>; 4]> = SmallVec::new();
            let mut claimed: SmallVec<[Src; 4]> = SmallVec::new();
            for s in &srcs {
                let first = match *s {
                    Src::Input => input_grad.is_some() && !input_has,
                    Src::Node(j) => !has[j],
                } && !claimed.contains(s);
                if first {
                    claimed.push(*s);
                    direct.push(Some(match *s {
                        Src::Input => input_grad.take().expect("input gradient buffer"),
                        Src::Node(j) => {
                            let mut d = self.tmps.pop().unwrap_or_default();
                            grow(&mut d, batch * self.nodes[j].out_len);
                            d
                        }
                    }));
                    temps.push(None);
                } else {
                    direct.push(None);
                    let wanted = match *s {
                        Src::Input => input_grad.is_some() || claimed.contains(s),
                        Src::Node(_) => true,
                    };
                    temps.push(if wanted {
                        let mut v = self.tmps.pop().unwrap_or_default();
                        grow(&mut v, batch * self.src_len(*s));
                        Some(v)
                    } else {
                        None
                    });
                }
            }
            {
                let ins: Inputs<'_> = srcs
                    .iter()
                    .map(|s| match *s {
                        Src::Input => x,
                        Src::Node(j) => &self.outs[j][..batch * self.nodes[j].out_len],
                    })
                    .collect();
                let lens: SmallVec<[usize; 4]> =
                    srcs.iter().map(|s| batch * self.src_len(*s)).collect();
                let mut dx: SmallVec<[Option<&mut [f32]>; 4]> = direct
                    .iter_mut()
                    .zip(temps.iter_mut())
                    .zip(&lens)
                    .map(|((d, t), &len)| match (d, t) {
                        (Some(d), _) => Some(&mut d[..len]),
                        (None, Some(t)) => Some(&mut t[..len]),
                        (None, None) => None,
                    })
                    .collect();
                let out = &self.outs[i][..batch * self.nodes[i].out_len];
                let dyv = &mut dy[..batch * self.nodes[i].out_len];
                self.nodes[i]
                    .layer
                    .backward(&ins, out, dyv, &mut dx, batch, &mut self.scratch);
            }
            self.nodes[i].layer.add_regularization();
            self.tmps.push(dy);
            // Give the direct buffers back, then add the temporaries (in input order).
            for (s, d) in srcs.iter().zip(direct) {
                if let Some(d) = d {
                    match *s {
                        Src::Input => {
                            input_grad = Some(d);
                            input_has = true;
                        }
                        Src::Node(j) => {
                            self.douts[j] = d;
                            has[j] = true;
                        }
                    }
                }
            }
            for (s, t) in srcs.iter().zip(temps) {
                if let Some(t) = t {
                    let len = batch * self.src_len(*s);
                    let dst = match *s {
                        Src::Input => input_grad.as_mut().map(|g| &mut g[..len]),
                        Src::Node(j) => Some(&mut self.douts[j][..len]),
                    };
                    if let Some(dst) = dst {
                        dst.iter_mut().zip(&t[..len]).for_each(|(a, b)| *a += b);
                    }
                    self.tmps.push(t);
                }
            }
            self.bwd_secs[i] += t.elapsed().as_secs_f64();
        }
        self.input_grad = input_grad;
        self.has = has;
    }

    fn src_len(&self, s: Src) -> usize {
        match s {
            Src::Input => self.in_len(),
            Src::Node(j) => self.nodes[j].out_len,
        }
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl GraphNet {
    /// Keras-style summary: for a stack, Keras' Sequential table; for a graph, the Functional
    /// table with the input layer and a "Connected to" column. Totals count the state
    /// (BatchNormalization's moving statistics) as non-trainable parameters, as Keras does.
    pub fn summary(&self) -> String {
        let stack = self
            .nodes
            .iter()
            .enumerate()
            .all(|(i, n)| n.inputs == [if i == 0 { Src::Input } else { Src::Node(i - 1) }]);
        let widths: &[usize] = if stack {
            &[29, 26, 10]
        } else {
            &[29, 21, 10, 30]
        };
        let line_len: usize = widths.iter().sum::<usize>() + 1;
        // One table row; a cell longer than its column wraps onto further lines, as Keras
        // prints it.
        let row = |cells: &[String]| {
            let wrapped: Vec<Vec<String>> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| {
                    let chars: Vec<char> = c.chars().collect();
                    let w = (*w - 2).max(1);
                    chars.chunks(w).map(|p| p.iter().collect()).collect()
                })
                .collect();
            let lines = wrapped.iter().map(Vec::len).max().unwrap_or(1).max(1);
            let mut r = String::new();
            for i in 0..lines {
                let mut line = String::from(" ");
                for (k, (cell, w)) in wrapped.iter().zip(widths).enumerate() {
                    let text = cell.get(i).map_or("", String::as_str);
                    if k + 1 == wrapped.len() {
                        line += text;
                    } else {
                        line += &format!("{text:<w$}", w = *w);
                    }
                }
                r += line.trim_end();
                r += "\n";
            }
            r
        };
        let shape = |s: &[usize]| {
            let d: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("(None, {})", d.join(", "))
        };
        let name_of = |s: &Src| match *s {
            Src::Input => format!("'{}[0][0]'", self.spec.input_name),
            Src::Node(j) => format!("'{}[0][0]'", self.nodes[j].name),
        };
        let mut s = format!("Model: \"{}\"\n", self.spec.name);
        s += &"_".repeat(line_len);
        s += "\n";
        let mut head = vec![
            "Layer (type)".to_string(),
            "Output Shape".into(),
            "Param #".into(),
        ];
        if !stack {
            head.push("Connected to".into());
            s += &row(&head);
            s += &"=".repeat(line_len);
            s += "\n";
            s += &row(&[
                format!("{} (InputLayer)", self.spec.input_name),
                shape(&self.input_shape),
                "0".into(),
                "[]".into(),
            ]);
            s += "\n";
        } else {
            s += &row(&head);
            s += &"=".repeat(line_len);
            s += "\n";
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let count: usize = n
                .layer
                .params()
                .iter()
                .chain(n.layer.state())
                .map(|p| p.value.len())
                .sum();
            let mut cells = vec![
                format!("{} ({})", n.name, n.layer.class()),
                shape(n.layer.output_shape()),
                count.to_string(),
            ];
            if !stack {
                let ins: Vec<String> = n.inputs.iter().map(name_of).collect();
                cells.push(format!("[{}]", ins.join(", ")));
            }
            s += &row(&cells);
            if stack {
                s += &if i + 1 == self.nodes.len() {
                    "=".repeat(line_len)
                } else {
                    "_".repeat(line_len)
                };
            }
            s += "\n";
        }
        if !stack {
            s += &"=".repeat(line_len);
            s += "\n";
        }
        let trainable: usize = self.params().map(|p| p.value.len()).sum();
        let fixed: usize = self.state().map(|p| p.value.len()).sum();
        s += &format!(
            "Total params: {}\nTrainable params: {}\nNon-trainable params: {}\n",
            thousands(trainable + fixed),
            thousands(trainable),
            thousands(fixed)
        );
        s += &"_".repeat(line_len);
        s += "\n";
        s
    }
}
