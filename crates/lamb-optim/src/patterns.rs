//! Exclusion lists: regular expressions searched (not fully matched) in tensor names, as
//! tensorflow-addons does with `re.search`.

use crate::OptimError;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Which tensors get the trust ratio (LAMB, LARS; SGD adapts none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerAdaptation {
    /// Every tensor not matched by `exclude_from_layer_adaptation` (or, when that list is
    /// empty, by `exclude_from_weight_decay`): tensorflow-addons, optax LARS.
    Exclusions,
    /// Every tensor (optax, pytorch-lamb, NVLAMB, DeepSpeed; timm `always_adapt=True`).
    All,
    /// Only tensors that are weight-decayed with a non-zero rate (timm `always_adapt=False`,
    /// apex `use_nvlamb=False`).
    DecayedOnly,
    /// No tensor (pytorch-lamb `adam=True`: ratio forced to 1; SGD).
    Never,
}

/// A compiled list of exclusion patterns for one argument.
#[derive(Debug, Clone, Default)]
pub(crate) struct Patterns {
    list: Vec<Regex>,
}

impl Patterns {
    /// Compiles every pattern; an invalid or unsupported one (look-around, backreferences) is an
    /// error naming the argument and the pattern.
    pub(crate) fn compile(argument: &'static str, patterns: &[String]) -> Result<Self, OptimError> {
        let mut list = Vec::with_capacity(patterns.len());
        for p in patterns {
            let re = Regex::new(p).map_err(|e| OptimError::InvalidRegex {
                argument,
                pattern: p.clone(),
                message: e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .to_string(),
            })?;
            list.push(re);
        }
        Ok(Self { list })
    }

    /// Whether the list has no pattern.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether any pattern is found somewhere in `name`.
    pub(crate) fn matches(&self, name: &str) -> bool {
        self.list.iter().any(|r| r.is_match(name))
    }
}

/// The two tensorflow-addons lists with the fallback rule (public for the framework
/// adapters, which classify tensors by name exactly as the optimizers here do): an empty layer-adaptation list means
/// the weight-decay list.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    decay: Patterns,
    adaptation: Patterns,
}

impl Exclusions {
    /// Compiles `exclude_from_weight_decay` and `exclude_from_layer_adaptation`.
    pub fn new(decay: &[String], adaptation: &[String]) -> Result<Self, OptimError> {
        Ok(Self {
            decay: Patterns::compile("exclude_from_weight_decay", decay)?,
            adaptation: Patterns::compile("exclude_from_layer_adaptation", adaptation)?,
        })
    }

    /// Whether `name` is decayed (not matched by the weight-decay list).
    pub(crate) fn decays(&self, name: &str) -> bool {
        !self.decay.matches(name)
    }

    /// Whether `name` is adapted by the exclusion lists (an empty adaptation list falls back to
    /// the weight-decay list).
    pub(crate) fn adapts(&self, name: &str) -> bool {
        if self.adaptation.is_empty() {
            !self.decay.matches(name)
        } else {
            !self.adaptation.matches(name)
        }
    }
}

impl Exclusions {
    /// Whether the tensor `name` is (decayed, adapted) under `mode` with weight-decay rate
    /// `wd`: the classification every optimizer resolves once per tensor.
    pub fn classify(&self, mode: LayerAdaptation, wd: f32, name: &str) -> (bool, bool) {
        let decay = self.decays(name);
        let adapt = match mode {
            LayerAdaptation::Exclusions => self.adapts(name),
            LayerAdaptation::All => true,
            LayerAdaptation::DecayedOnly => decay && wd != 0.0,
            LayerAdaptation::Never => false,
        };
        (decay, adapt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_not_full_match_and_fallback() {
        let e = Exclusions::new(&["bias".into()], &[]).unwrap();
        assert!(!e.decays("dense/bias"));
        assert!(e.decays("dense/kernel"));
        assert!(!e.adapts("dense/bias"));
        let e = Exclusions::new(&[], &["bias".into()]).unwrap();
        assert!(e.decays("dense/bias"));
        assert!(!e.adapts("dense/bias"));
        assert!(e.adapts("dense/kernel"));
    }

    #[test]
    fn classification_by_mode() {
        let e = super::Exclusions::new(&["bias".into()], &["norm".into()]).unwrap();
        use LayerAdaptation::*;
        assert_eq!(e.classify(Exclusions, 0.0, "dense/bias"), (false, true));
        assert_eq!(e.classify(Exclusions, 0.0, "ln/norm"), (true, false));
        assert_eq!(e.classify(All, 0.0, "ln/norm"), (true, true));
        assert_eq!(e.classify(DecayedOnly, 0.0, "dense/kernel"), (true, false));
        assert_eq!(e.classify(DecayedOnly, 0.1, "dense/kernel"), (true, true));
        assert_eq!(e.classify(DecayedOnly, 0.1, "dense/bias"), (false, false));
        assert_eq!(e.classify(Never, 0.1, "dense/kernel"), (true, false));
    }

    #[test]
    fn lookaround_is_an_error() {
        let err = Patterns::compile("exclude_from_weight_decay", &["(?!bias)".into()]).unwrap_err();
        match err {
            OptimError::InvalidRegex {
                argument, pattern, ..
            } => {
                assert_eq!(argument, "exclude_from_weight_decay");
                assert_eq!(pattern, "(?!bias)");
            }
            e => panic!("unexpected {e:?}"),
        }
    }
}
