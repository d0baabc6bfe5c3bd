//! Learning-rate schedules and batch-size scaling helpers.
//!
//! A schedule maps the 1-based step number `t` of the step about to run and the optimizer's
//! base `learning_rate` to the rate used by that step. The schedule position is the
//! optimizer's step count, which is saved with its state.

use crate::OptimError;
use serde::{Deserialize, Serialize};

/// How the learning rate evolves with the step number `t` (1-based). `lr` is the optimizer's
/// `learning_rate` (the peak rate for warmup schedules).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// `lr` at every step (the default; what tensorflow-addons and Keras use).
    #[default]
    Constant,
    /// `lr * min(t / warmup_steps, 1)`.
    LinearWarmup {
        /// Steps to reach `lr` (>= 1).
        warmup_steps: u64,
    },
    /// The LAMB paper / BERT schedule: linear warmup `lr * t / warmup_steps` for
    /// `t <= warmup_steps`, then `(lr - end_learning_rate) * (1 - min(t, total_steps) /
    /// total_steps)^power + end_learning_rate`.
    PolynomialDecay {
        /// Warmup steps (0 for none).
        warmup_steps: u64,
        /// Step at which the rate reaches `end_learning_rate` (> warmup_steps).
        total_steps: u64,
        /// Decay exponent (default 1: linear decay).
        #[serde(default = "one")]
        power: f64,
        /// Final rate (default 0).
        #[serde(default)]
        end_learning_rate: f64,
    },
    /// Linear warmup, then half-cosine from `lr` down to `min_learning_rate` at `total_steps`
    /// (over the steps after warmup), constant afterwards.
    Cosine {
        /// Warmup steps (0 for none).
        warmup_steps: u64,
        /// Step at which the rate reaches `min_learning_rate` (> warmup_steps).
        total_steps: u64,
        /// Final rate (default 0).
        #[serde(default)]
        min_learning_rate: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl Schedule {
    /// The polynomial decay of the LAMB paper with power 1 and final rate 0.
    pub fn polynomial(warmup_steps: u64, total_steps: u64) -> Self {
        Schedule::PolynomialDecay {
            warmup_steps,
            total_steps,
            power: 1.0,
            end_learning_rate: 0.0,
        }
    }

    /// Checks the parameters; errors name the field.
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad = |name: &'static str, value: String, valid: &str| {
            Err(OptimError::InvalidHyperparameter {
                name,
                value,
                valid: valid.into(),
            })
        };
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::LinearWarmup { warmup_steps } => {
                if warmup_steps == 0 {
                    bad("warmup_steps", "0".into(), "must be >= 1 for linear_warmup")
                } else {
                    Ok(())
                }
            }
            Schedule::PolynomialDecay {
                warmup_steps,
                total_steps,
                power,
                end_learning_rate,
            } => {
                if total_steps <= warmup_steps {
                    return bad(
                        "total_steps",
                        total_steps.to_string(),
                        &format!("must be > warmup_steps ({warmup_steps})"),
                    );
                }
                if !(power.is_finite() && power > 0.0) {
                    return bad("power", power.to_string(), "must be finite and > 0");
                }
                if !(end_learning_rate.is_finite() && end_learning_rate >= 0.0) {
                    return bad(
                        "end_learning_rate",
                        end_learning_rate.to_string(),
                        "must be finite and >= 0",
                    );
                }
                Ok(())
            }
            Schedule::Cosine {
                warmup_steps,
                total_steps,
                min_learning_rate,
            } => {
                if total_steps <= warmup_steps {
                    return bad(
                        "total_steps",
                        total_steps.to_string(),
                        &format!("must be > warmup_steps ({warmup_steps})"),
                    );
                }
                if !(min_learning_rate.is_finite() && min_learning_rate >= 0.0) {
                    return bad(
                        "min_learning_rate",
                        min_learning_rate.to_string(),
                        "must be finite and >= 0",
                    );
                }
                Ok(())
            }
        }
    }

    /// The rate for step `t` (1-based) given the base rate `lr`. Constant returns `lr`
    /// bit-exactly; the others are computed in f64 and rounded once.
    pub fn learning_rate(&self, lr: f32, t: u64) -> f32 {
        let t = t.max(1);
        let base = lr as f64;
        let warm = |w: u64| -> Option<f64> {
            if w > 0 && t <= w {
                Some(base * t as f64 / w as f64)
            } else {
                None
            }
        };
        let r = match *self {
            Schedule::Constant => return lr,
            Schedule::LinearWarmup { warmup_steps } => match warm(warmup_steps) {
                Some(x) => x,
                None => return lr,
            },
            Schedule::PolynomialDecay {
                warmup_steps,
                total_steps,
                power,
                end_learning_rate,
            } => warm(warmup_steps).unwrap_or_else(|| {
                let frac = 1.0 - t.min(total_steps) as f64 / total_steps as f64;
                (base - end_learning_rate) * frac.powf(power) + end_learning_rate
            }),
            Schedule::Cosine {
                warmup_steps,
                total_steps,
                min_learning_rate,
            } => warm(warmup_steps).unwrap_or_else(|| {
                let span = (total_steps - warmup_steps) as f64;
                let p = ((t.min(total_steps) - warmup_steps) as f64 / span).min(1.0);
                min_learning_rate
                    + (base - min_learning_rate) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }),
        };
        r as f32
    }
}

/// Square-root scaling of a learning rate tuned at `base_batch` to `batch` (the LAMB paper's
/// rule): `lr * sqrt(batch / base_batch)`.
pub fn sqrt_scaled_learning_rate(lr: f32, base_batch: usize, batch: usize) -> f32 {
    (lr as f64 * (batch as f64 / base_batch.max(1) as f64).sqrt()) as f32
}

/// Linear scaling (Goyal et al.): `lr * batch / base_batch`.
pub fn linear_scaled_learning_rate(lr: f32, base_batch: usize, batch: usize) -> f32 {
    (lr as f64 * batch as f64 / base_batch.max(1) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_exact() {
        assert_eq!(Schedule::Constant.learning_rate(1e-3, 7), 1e-3);
    }

    #[test]
    fn warmup_then_polynomial() {
        let s = Schedule::polynomial(10, 110);
        assert!((s.learning_rate(1.0, 1) - 0.1).abs() < 1e-7);
        assert!((s.learning_rate(1.0, 10) - 1.0).abs() < 1e-7);
        // after warmup: (1 - t/T)^1
        assert!((s.learning_rate(1.0, 55) - 0.5).abs() < 1e-6);
        assert_eq!(s.learning_rate(1.0, 110), 0.0);
        assert_eq!(s.learning_rate(1.0, 500), 0.0);
        let s2 = Schedule::PolynomialDecay {
            warmup_steps: 0,
            total_steps: 100,
            power: 2.0,
            end_learning_rate: 0.0,
        };
        assert!((s2.learning_rate(1.0, 50) - 0.25).abs() < 1e-6);
    }

    #[test]
    fn cosine_and_warmup() {
        let s = Schedule::Cosine {
            warmup_steps: 0,
            total_steps: 100,
            min_learning_rate: 0.0,
        };
        assert!((s.learning_rate(2.0, 50) - 1.0).abs() < 1e-6);
        assert!(s.learning_rate(2.0, 100).abs() < 1e-6);
        let w = Schedule::LinearWarmup { warmup_steps: 4 };
        assert_eq!(w.learning_rate(1.0, 2), 0.5);
        assert_eq!(w.learning_rate(1.0, 9), 1.0);
    }

    #[test]
    fn invalid_rejected() {
        assert!(Schedule::polynomial(10, 10).validate().is_err());
        assert!(Schedule::LinearWarmup { warmup_steps: 0 }
            .validate()
            .is_err());
    }

    #[test]
    fn batch_scaling() {
        assert!((sqrt_scaled_learning_rate(1e-3, 100, 400) - 2e-3).abs() < 1e-9);
        assert!((linear_scaled_learning_rate(1e-3, 100, 400) - 4e-3).abs() < 1e-9);
    }

    #[test]
    fn serde_round_trip() {
        let s = Schedule::polynomial(5, 50);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Schedule>(&j).unwrap(), s);
        let p: Schedule =
            serde_json::from_str(r#"{"kind":"polynomial_decay","warmup_steps":1,"total_steps":9}"#)
                .unwrap();
        assert_eq!(p, Schedule::polynomial(1, 9));
    }
}
