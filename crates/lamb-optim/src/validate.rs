//! Construction-time checks of hyperparameters. Each failure names the argument (with the
//! tensorflow-addons spelling), the value given and the valid range.

use crate::OptimError;

fn invalid(name: &'static str, value: f32, valid: &str) -> OptimError {
    OptimError::InvalidHyperparameter {
        name,
        value: format!("{value:?}"),
        valid: valid.to_string(),
    }
}

/// A learning rate: finite and >= 0.
pub(crate) fn learning_rate(name: &'static str, value: f32) -> Result<(), OptimError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(name, value, "must be finite and >= 0"))
    }
}

/// A moment decay rate: in [0, 1).
pub(crate) fn beta(name: &'static str, value: f32) -> Result<(), OptimError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(invalid(name, value, "must be in [0, 1)"))
    }
}

/// An epsilon that must be strictly positive (tensorflow-addons silently replaces 0 by 1e-7;
/// this crate rejects it instead).
pub(crate) fn positive(name: &'static str, value: f32) -> Result<(), OptimError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            name,
            value,
            "must be finite and > 0 (tensorflow-addons silently turns 0 into 1e-7; pass 1e-7 explicitly)",
        ))
    }
}

/// A finite value >= 0 (weight decay, epsilon that may be 0, clipping norms).
pub(crate) fn non_negative(name: &'static str, value: f32) -> Result<(), OptimError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(name, value, "must be finite and >= 0"))
    }
}

/// A value in [0, 1] (dampening).
pub(crate) fn unit_interval(name: &'static str, value: f32) -> Result<(), OptimError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(invalid(name, value, "must be in [0, 1]"))
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
        assert!(learning_rate("learning_rate", 0.0).is_ok());
        assert!(learning_rate("learning_rate", -1e-3).is_err());
        assert!(learning_rate("learning_rate", f32::NAN).is_err());
        assert!(beta("beta_1", 0.0).is_ok());
        assert!(beta("beta_1", 1.0).is_err());
        assert!(positive("epsilon", 0.0).is_err());
        assert!(clamp_range("trust_ratio_clamp", 2.0, 1.0).is_err());
        assert!(clamp_range("trust_ratio_clamp", 0.0, f32::INFINITY).is_ok());
        let e = beta("beta_2", 1.5).unwrap_err().to_string();
        assert!(
            e.contains("beta_2") && e.contains("1.5") && e.contains("[0, 1)"),
            "{e}"
        );
    }
}
