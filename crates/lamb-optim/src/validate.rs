//! Valid ranges of hyperparameters, written once: the optimizers check their configuration
//! with them at construction and the descriptions ([`crate::Description`]) show them. Each
//! failure names the argument (with the tensorflow-addons spelling), the value given and the
//! valid range.

use crate::OptimError;
use serde::{Deserialize, Serialize};

/// The valid range of a numeric hyperparameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Range {
    /// Finite and >= 0 (learning rates, weight decay, an epsilon that may be 0).
    NonNegative,
    /// Finite and > 0 (an epsilon that must not be 0, clipping norms, trust coefficients).
    Positive,
    /// In [0, 1) (moment decay rates, momentum).
    Fraction,
    /// In [0, 1] (dampening).
    UnitInterval,
}

impl Range {
    /// The range in words, as error messages give it.
    pub fn text(self) -> &'static str {
        match self {
            Range::NonNegative => "must be finite and >= 0",
            Range::Positive => {
                "must be finite and > 0 (tensorflow-addons silently turns 0 into 1e-7; pass 1e-7 explicitly)"
            }
            Range::Fraction => "must be in [0, 1)",
            Range::UnitInterval => "must be in [0, 1]",
        }
    }

    /// Whether `value` lies in the range.
    pub fn contains(self, value: f64) -> bool {
        match self {
            Range::NonNegative => value.is_finite() && value >= 0.0,
            Range::Positive => value.is_finite() && value > 0.0,
            Range::Fraction => (0.0..1.0).contains(&value),
            Range::UnitInterval => (0.0..=1.0).contains(&value),
        }
    }

    /// `Ok` if `value` lies in the range, else the error naming `name`, the value and the range.
    pub fn check(self, name: &'static str, value: f32) -> Result<(), OptimError> {
        if self.contains(value as f64) {
            Ok(())
        } else {
            Err(OptimError::InvalidHyperparameter {
                name,
                value: format!("{value:?}"),
                valid: self.text().to_string(),
            })
        }
    }
}

/// A clamp range `[min, max]`: both finite or max infinite, `0 <= min <= max`.
pub(crate) fn clamp_range(name: &'static str, min: f32, max: f32) -> Result<(), OptimError> {
    if !(min.is_finite() && min >= 0.0) {
        return Err(OptimError::InvalidHyperparameter {
            name,
            value: format!("[{min:?}, {max:?}]"),
            valid: "min must be finite and >= 0".into(),
        });
    }
    if max.is_nan() || min > max {
        return Err(OptimError::InvalidHyperparameter {
            name,
            value: format!("[{min:?}, {max:?}]"),
            valid: "min must be <= max".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(Range::NonNegative.check("learning_rate", 0.0).is_ok());
        assert!(Range::NonNegative.check("learning_rate", -1e-3).is_err());
        assert!(Range::NonNegative.check("learning_rate", f32::NAN).is_err());
        assert!(Range::Fraction.check("beta_1", 0.0).is_ok());
        assert!(Range::Fraction.check("beta_1", 1.0).is_err());
        assert!(Range::Positive.check("epsilon", 0.0).is_err());
        assert!(Range::UnitInterval.check("dampening", 1.0).is_ok());
        assert!(clamp_range("trust_ratio_clamp", 2.0, 1.0).is_err());
        assert!(clamp_range("trust_ratio_clamp", 0.0, f32::INFINITY).is_ok());
        let e = Range::Fraction
            .check("beta_2", 1.5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("beta_2") && e.contains("1.5") && e.contains("[0, 1)"),
            "{e}"
        );
    }
}
