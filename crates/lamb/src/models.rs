//! The model a command trains or evaluates: the classic seed CNN, a built-in, or a Keras
//! model JSON file (`--model seed-cnn|resnet20|FILE`).

use std::path::Path;

use anyhow::{Context, Result};
use lamb_nn::{classic_cnn, Model, ModelSpec};

use crate::config::{ActivationKind, SEED_CNN};

/// Builds model `name` (`seed-cnn` with `activation`, `resnet20`, or a Keras JSON file) with
/// initialisers seeded by `seed`.
pub fn build(name: &str, activation: ActivationKind, seed: u64) -> Result<Model> {
    if name == SEED_CNN {
        return Ok(classic_cnn(crate::run::activation(activation), seed)?);
    }
    let spec =
        ModelSpec::named(name, activation.as_str()).with_context(|| format!("--model {name}"))?;
    spec.build(seed).with_context(|| format!("--model {name}"))
}

/// The model whose weights are in `weights`: `name` when given, else the description stored
/// in the weights file, else the run's config.toml beside it, else the seed CNN with
/// `activation`. Returns the model and what it is, in words.
pub fn for_weights(
    weights: &Path,
    name: Option<&str>,
    activation: ActivationKind,
) -> Result<(Model, String)> {
    if let Some(n) = name {
        return Ok((build(n, activation, 0)?, n.to_string()));
    }
    if let Some(spec) = ModelSpec::from_weights_file(weights)? {
        let what = format!("the model described in {}", weights.display());
        return Ok((spec.build(0)?, what));
    }
    let beside = weights.parent().map(|p| p.join("config.toml"));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        if let Some(m) = crate::config::Settings::from_file(&p)?.model {
            return Ok((build(&m, activation, 0)?, m));
        }
    }
    Ok((
        build(SEED_CNN, activation, 0)?,
        format!("the classic CNN ({activation})"),
    ))
}
