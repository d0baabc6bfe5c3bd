//! The parameters an optimizer steps: candle [`Var`]s with the names exclusion patterns and
//! saved state refer to, each classified once (decayed, adapted) by `lamb-optim`'s rules.

use crate::error::{msg, Result};
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use lamb_optim::{Exclusions, LayerAdaptation};

/// One parameter: its name, its variable, its optimizer slots and its classification.
#[derive(Debug)]
pub(crate) struct Param {
    /// Name searched by the exclusion patterns and used in saved state.
    pub name: String,
    /// The candle variable, updated in place by a step.
    pub var: Var,
    /// Whether weight decay applies.
    pub decay: bool,
    /// Whether the trust ratio applies.
    pub adapt: bool,
    /// Optimizer slots (LAMB `m`, `v`; LARS `momentum`), on the variable's device.
    pub slots: Vec<Tensor>,
}

/// The named variables of a [`VarMap`], sorted by name (a `VarMap` is a hash map: sorting
/// gives every run the same order).
pub(crate) fn varmap_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| msg("the VarMap's lock is poisoned (a thread panicked while holding it)"))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// Names for variables handed over without names (candle-nn's `Optimizer::new`): `param.0`,
/// `param.1`, ... in the order given.
pub(crate) fn positional_names(vars: Vec<Var>) -> Vec<(String, Var)> {
    vars.into_iter()
        .enumerate()
        .map(|(i, v)| (format!("param.{i}"), v))
        .collect()
}

/// Classifies every variable and gives it zeroed slots. Only f32 variables are accepted (the
/// golden-verified arithmetic is f32); a duplicate name or another dtype is an error naming it.
pub(crate) fn build_params(
    vars: Vec<(String, Var)>,
    slot_names: &[&str],
    exclusions: &Exclusions,
    adaptation: LayerAdaptation,
    weight_decay_rate: f32,
) -> Result<Vec<Param>> {
    let mut out: Vec<Param> = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        if var.dtype() != DType::F32 {
            return Err(msg(format!(
                "variable `{name}` has dtype {:?}: lamb-candle steps f32 variables only \
                 (convert the model with `to_dtype(DType::F32)`)",
                var.dtype()
            )));
        }
        if out.iter().any(|p| p.name == name) {
            return Err(msg(format!(
                "variable name `{name}` given twice: names must be unique"
            )));
        }
        let (decay, adapt) = exclusions.classify(adaptation, weight_decay_rate, &name);
        let slots = slot_names
            .iter()
            .map(|_| var.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        out.push(Param {
            name,
            var,
            decay,
            adapt,
            slots,
        });
    }
    Ok(out)
}
