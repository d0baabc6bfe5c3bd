//! Keras initialisers (tf.keras 2.15): glorot_uniform, he_normal (a normal truncated at two
//! standard deviations), zeros and ones; others are refused by name. Keras' `seed` option is
//! ignored: the model's seed fixes every draw.

use rand::distributions::{Distribution, Uniform};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// An initialiser a model file may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Init {
    GlorotUniform,
    HeNormal,
    Zeros,
    Ones,
}

impl Init {
    /// Reads `config[key]` (a `{class_name, config}` object or a string), `default` when
    /// absent.
    pub fn read(config: &Value, key: &str, default: Init) -> Result<Init, String> {
        let Some(v) = config.get(key).filter(|v| !v.is_null()) else {
            return Ok(default);
        };
        let name = v
            .get("class_name")
            .and_then(Value::as_str)
            .or(v.as_str())
            .unwrap_or("");
        match name {
            "GlorotUniform" | "glorot_uniform" => Ok(Init::GlorotUniform),
            "HeNormal" | "he_normal" => Ok(Init::HeNormal),
            "Zeros" | "zeros" => Ok(Init::Zeros),
            "Ones" | "ones" => Ok(Init::Ones),
            _ => Err(format!(
                "option `{key}` = {v} is not supported (supported: GlorotUniform, HeNormal, Zeros, Ones)"
            )),
        }
    }

    /// `n` values drawn for a tensor with the given fans (as Keras computes them).
    pub fn draw(self, n: usize, fan_in: usize, fan_out: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        match self {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::GlorotUniform => {
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                let dist = Uniform::new_inclusive(-limit, limit);
                (0..n).map(|_| dist.sample(rng)).collect()
            }
            Init::HeNormal => {
                // Keras: stddev = sqrt(2 / fan_in) / .87962566103423978, truncated at 2 stddev.
                let std = (2.0 / fan_in.max(1) as f64).sqrt() / 0.879_625_661_034_239_8;
                (0..n)
                    .map(|_| loop {
                        let z = standard_normal(rng);
                        if z.abs() <= 2.0 {
                            break (z * std) as f32;
                        }
                    })
                    .collect()
            }
        }
    }
}

/// One standard normal draw (Box-Muller).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn he_normal_is_truncated_with_keras_stddev() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let fan_in = 50;
        let v = Init::HeNormal.draw(200_000, fan_in, 1, &mut rng);
        let std = (2.0 / fan_in as f64).sqrt() / 0.879_625_661_034_239_8;
        assert!(v.iter().all(|x| (*x as f64).abs() <= 2.0 * std + 1e-6));
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        // The truncated distribution's standard deviation is sqrt(2 / fan_in).
        let want = (2.0 / fan_in as f64).sqrt();
        assert!(
            (var.sqrt() - want).abs() < 0.01 * want,
            "{} vs {want}",
            var.sqrt()
        );
        assert!(mean.abs() < 0.01 * want);
    }

    #[test]
    fn unknown_initialiser_is_refused_by_name() {
        let cfg = serde_json::json!({"kernel_initializer": {"class_name": "Orthogonal"}});
        let e = Init::read(&cfg, "kernel_initializer", Init::Zeros).unwrap_err();
        assert!(
            e.contains("Orthogonal") && e.contains("GlorotUniform"),
            "{e}"
        );
    }
}
