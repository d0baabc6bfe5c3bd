//! Reading a layer's Keras config: typed fields with Keras defaults, and refusal, by name, of
//! options the engine does not support.

use serde_json::Value;

/// A Keras config object with helpers that turn missing or malformed fields into errors.
pub(crate) struct Config<'a>(pub &'a Value);

impl Config<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// A non-negative integer field, `default` when absent.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("option `{key}` = {v}: expected a non-negative integer")),
        }
    }

    /// A required positive integer field.
    pub fn positive(&self, key: &str) -> Result<usize, String> {
        match self.usize_or(key, 0)? {
            0 => Err(format!(
                "option `{key}` is missing or 0: expected at least 1"
            )),
            n => Ok(n),
        }
    }

    /// A number field, `default` when absent.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("option `{key}` = {v}: expected a number")),
        }
    }

    /// A boolean field, `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("option `{key}` = {v}: expected true or false")),
        }
    }

    /// A string field, `default` when absent.
    pub fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| format!("option `{key}` = {v}: expected a string")),
        }
    }

    /// A 2-D size (`3` or `[3, 3]`), `default` when absent.
    pub fn pair_or(&self, key: &str, default: Option<[usize; 2]>) -> Result<[usize; 2], String> {
        let bad = |v: &Value| format!("option `{key}` = {v}: expected an integer or two");
        match self.get(key) {
            None => default.ok_or_else(|| format!("option `{key}` is missing")),
            Some(v) => {
                if let Some(n) = v.as_u64() {
                    return Ok([n as usize; 2]);
                }
                match v.as_array().map(|a| a.as_slice()) {
                    Some([a, b]) => match (a.as_u64(), b.as_u64()) {
                        (Some(a), Some(b)) => Ok([a as usize, b as usize]),
                        _ => Err(bad(v)),
                    },
                    _ => Err(bad(v)),
                }
            }
        }
    }

    /// Refuses `key` unless absent, null, or equal to one of `allowed` (the default first).
    pub fn only(&self, key: &str, allowed: &[Value]) -> Result<(), String> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if allowed.contains(v) => Ok(()),
            Some(v) => Err(format!(
                "option `{key}` = {v} is not supported (supported: {})",
                allowed
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
        }
    }

    /// Refuses options every layer shares that the engine does not support: non-float32
    /// dtype, a frozen layer, channels_first, constraints and activity/bias regularisers.
    pub fn common(&self) -> Result<(), String> {
        use serde_json::json;
        self.only("dtype", &[json!("float32")])?;
        self.only("trainable", &[json!(true)])?;
        self.only("data_format", &[json!("channels_last")])?;
        for key in [
            "activity_regularizer",
            "bias_regularizer",
            "kernel_constraint",
            "bias_constraint",
            "beta_regularizer",
            "gamma_regularizer",
            "beta_constraint",
            "gamma_constraint",
        ] {
            if let Some(v) = self.get(key) {
                return Err(format!(
                    "option `{key}` = {v} is not supported (supported: null)"
                ));
            }
        }
        Ok(())
    }

    /// The L2 factor of a `kernel_regularizer` (0 when none); other regularisers are refused.
    pub fn l2(&self, key: &str) -> Result<f64, String> {
        let Some(v) = self.get(key) else {
            return Ok(0.0);
        };
        let class = v.get("class_name").and_then(Value::as_str).or(v.as_str());
        match class {
            Some("L2" | "l2") => {
                let l2 = v
                    .get("config")
                    .and_then(|c| c.get("l2"))
                    .and_then(Value::as_f64)
                    .unwrap_or(0.01);
                if l2.is_finite() && l2 >= 0.0 {
                    Ok(l2)
                } else {
                    Err(format!(
                        "option `{key}`: l2 = {l2}: expected a finite value >= 0"
                    ))
                }
            }
            _ => Err(format!(
                "option `{key}` = {v} is not supported (supported: L2 or null)"
            )),
        }
    }
}
