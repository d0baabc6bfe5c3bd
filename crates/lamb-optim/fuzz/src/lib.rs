//! What the `optimizer` fuzz target does with its input, shared with the seed test.

use lamb_optim::{Optimizer, OptimizerKind, OptimizerSpec, OptimizerState, ParamMut};

/// How the bytes after the mode byte are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An [`OptimizerSpec`] as JSON.
    SpecJson,
    /// An [`OptimizerSpec`] as TOML (the `[optimizer]`-like tables of config files).
    SpecToml,
    /// An [`OptimizerState`] as JSON (the `optimizer` metadata of a checkpoint, slots filled).
    StateJson,
}

impl Mode {
    /// The mode a first byte selects.
    pub fn of(byte: u8) -> Mode {
        match byte % 3 {
            0 => Mode::SpecJson,
            1 => Mode::SpecToml,
            _ => Mode::StateJson,
        }
    }

    /// The first byte that selects this mode.
    pub fn byte(self) -> u8 {
        self as u8
    }
}

/// Reads `bytes` in `mode`, builds the optimizer and takes one step on a small tensor.
/// `Ok(true)` when everything was accepted and the step ran, `Ok(false)` when the input was
/// refused with an error (the expected outcome for most inputs). Never panics on any input.
pub fn exercise(mode: Mode, bytes: &[u8]) -> bool {
    match mode {
        Mode::SpecJson => match serde_json::from_slice::<OptimizerSpec>(bytes) {
            Ok(spec) => build_and_step(&spec),
            Err(_) => false,
        },
        Mode::SpecToml => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return false;
            };
            match toml::from_str::<OptimizerSpec>(text) {
                Ok(spec) => build_and_step(&spec),
                Err(_) => false,
            }
        }
        Mode::StateJson => {
            let Ok(state) = serde_json::from_slice::<OptimizerState>(bytes) else {
                return false;
            };
            let Ok(kind) = state.optimizer.parse::<OptimizerKind>() else {
                return false;
            };
            let Ok(mut opt) = lamb_optim::build(&OptimizerSpec::new(kind)) else {
                return false;
            };
            if opt.load_state(&state).is_err() {
                return false;
            }
            // Step the tensors the state describes (small ones), as a resumed run would.
            let mut tensors: Vec<(String, Vec<f32>, Vec<f32>)> = state
                .tensors
                .iter()
                .filter(|t| t.len <= 4096)
                .map(|t| {
                    let w = (0..t.len).map(|i| (i as f32 * 0.37).sin()).collect();
                    let g = (0..t.len).map(|i| (i as f32 * 0.11).cos() * 0.1).collect();
                    (t.name.clone(), w, g)
                })
                .collect();
            step(opt.as_mut(), &mut tensors)
        }
    }
}

fn build_and_step(spec: &OptimizerSpec) -> bool {
    let Ok(mut opt) = lamb_optim::build(spec) else {
        return false;
    };
    let mut tensors = vec![
        (
            "dense/kernel".to_string(),
            vec![1.0, -2.0, 0.5],
            vec![0.1, 0.2, -0.3],
        ),
        ("dense/bias".to_string(), vec![0.0], vec![0.5]),
    ];
    step(opt.as_mut(), &mut tensors)
}

fn step(opt: &mut dyn Optimizer, tensors: &mut [(String, Vec<f32>, Vec<f32>)]) -> bool {
    let shapes: Vec<[usize; 1]> = tensors.iter().map(|t| [t.1.len()]).collect();
    let mut params: Vec<ParamMut> = tensors
        .iter_mut()
        .zip(&shapes)
        .map(|((n, w, g), s)| ParamMut::new(n, s, w, g))
        .collect();
    opt.step(&mut params).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamb_optim::Schedule;

    /// The seeds of `optimizer`: every kind's spec as JSON and TOML (one with a schedule and
    /// patterns), and every kind's state after two steps; each checked to be accepted and to
    /// step. Written to `$LAMB_FUZZ_CORPUS/optimizer/` when that is set.
    #[test]
    fn seeds_are_valid_inputs_of_their_targets() {
        let mut seeds: Vec<(String, Mode, Vec<u8>)> = Vec::new();
        for kind in OptimizerKind::ALL {
            let spec = OptimizerSpec::new(*kind).with_learning_rate(0.01);
            seeds.push((
                format!("{kind}-spec.json"),
                Mode::SpecJson,
                serde_json::to_vec(&spec).unwrap(),
            ));
            seeds.push((
                format!("{kind}-spec.toml"),
                Mode::SpecToml,
                toml::to_string(&spec).unwrap().into_bytes(),
            ));
            let mut opt = lamb_optim::build(&spec).unwrap();
            let mut tensors = vec![
                (
                    "conv2d/kernel".to_string(),
                    vec![1.0, -2.0, 0.5, 0.25],
                    vec![0.1, 0.2, -0.3, 0.0],
                ),
                ("conv2d/bias".to_string(), vec![0.0, 0.1], vec![0.5, -0.5]),
            ];
            for _ in 0..2 {
                assert!(step(opt.as_mut(), &mut tensors));
            }
            seeds.push((
                format!("{kind}-state.json"),
                Mode::StateJson,
                serde_json::to_vec(&opt.state()).unwrap(),
            ));
        }
        let mut spec = OptimizerSpec::new(OptimizerKind::Lamb);
        spec.weight_decay_rate = Some(0.01);
        spec.exclude_from_weight_decay = Some(vec!["bias".into(), "^batch_norm/.*".into()]);
        spec.schedule = Some(Schedule::PolynomialDecay {
            warmup_steps: 1,
            total_steps: 10,
            power: 1.0,
            end_learning_rate: 0.0,
        });
        seeds.push((
            "lamb-decay-spec.toml".into(),
            Mode::SpecToml,
            toml::to_string(&spec).unwrap().into_bytes(),
        ));
        for (name, mode, bytes) in &seeds {
            assert!(
                exercise(*mode, bytes),
                "seed {name} refused: {}",
                String::from_utf8_lossy(bytes)
            );
        }
        if let Some(root) = std::env::var_os("LAMB_FUZZ_CORPUS") {
            let d = std::path::Path::new(&root).join("optimizer");
            std::fs::create_dir_all(&d).unwrap();
            for (name, mode, bytes) in &seeds {
                std::fs::write(d.join(name), [&[mode.byte()][..], bytes].concat()).unwrap();
            }
        }
    }
}
