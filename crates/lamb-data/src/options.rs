//! Options that change what a load produces (and so are part of a cache entry's name).

use std::fmt;
use std::str::FromStr;

/// Which of CIFAR-100's two labels to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Cifar100Labels {
    /// The 100 fine classes (the default).
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

impl Cifar100Labels {
    /// `fine` or `coarse`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cifar100Labels::Fine => "fine",
            Cifar100Labels::Coarse => "coarse",
        }
    }

    /// Number of classes (100 or 20).
    pub fn classes(self) -> usize {
        match self {
            Cifar100Labels::Fine => 100,
            Cifar100Labels::Coarse => 20,
        }
    }
}

impl FromStr for Cifar100Labels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fine" => Ok(Cifar100Labels::Fine),
            "coarse" => Ok(Cifar100Labels::Coarse),
            other => Err(format!(
                "unknown CIFAR-100 labels {other:?}; valid: fine, coarse"
            )),
        }
    }
}

/// A target image size for `--resize HxW`. Images of another size are resampled with bilinear
/// interpolation (the `image` crate's `Triangle` filter; for shrinking it averages over the
/// source pixels the triangle covers); images already of this size are kept bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resize {
    /// Target height in pixels.
    pub height: u32,
    /// Target width in pixels.
    pub width: u32,
}

/// The largest side `--resize` accepts.
pub const MAX_RESIZE_SIDE: u32 = 4096;

impl FromStr for Resize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size {s:?}: expected HEIGHTxWIDTH in pixels, each 1..={MAX_RESIZE_SIDE} \
                 (e.g. 32x32)"
            )
        };
        let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let side = |v: &str| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|&v| (1..=MAX_RESIZE_SIDE).contains(&v))
        };
        match (side(h), side(w)) {
            (Some(height), Some(width)) => Ok(Resize { height, width }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Resize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.height, self.width)
    }
}

/// What a load produces beyond the files themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct LoadOptions {
    /// Resize every image to this size (`--resize HxW`); `None` requires one size per dataset.
    pub resize: Option<Resize>,
    /// CIFAR-100's label set (`--labels fine|coarse`); ignored by the other formats.
    pub cifar100_labels: Cifar100Labels,
}

impl LoadOptions {
    /// A short tag for cache entry names: empty for the defaults, else e.g. `-r28x28-coarse`.
    pub fn tag(&self) -> String {
        let mut t = String::new();
        if let Some(r) = self.resize {
            t.push_str(&format!("-r{r}"));
        }
        if self.cifar100_labels != Cifar100Labels::Fine {
            t.push_str(&format!("-{}", self.cifar100_labels.as_str()));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_parses_height_by_width() {
        assert_eq!(
            "28x32".parse::<Resize>(),
            Ok(Resize {
                height: 28,
                width: 32
            })
        );
        for bad in ["28", "0x4", "4x0", "x4", "4x", "5000x5", "-1x3", "axb"] {
            let e = bad.parse::<Resize>().unwrap_err();
            assert!(e.contains("HEIGHTxWIDTH"), "{bad}: {e}");
        }
    }

    #[test]
    fn labels_parse_and_tag() {
        assert_eq!("coarse".parse(), Ok(Cifar100Labels::Coarse));
        assert!("medium".parse::<Cifar100Labels>().is_err());
        assert_eq!(LoadOptions::default().tag(), "");
        let o = LoadOptions {
            resize: Some("8x9".parse().unwrap()),
            cifar100_labels: Cifar100Labels::Coarse,
        };
        assert_eq!(o.tag(), "-r8x9-coarse");
    }
}
