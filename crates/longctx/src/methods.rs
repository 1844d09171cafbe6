//! The method registry: spec strings such as `baseline`, `flexgen-4bit` or
//! `flexgen:bits=4,group=32`, parsed once, with an error naming any unknown method or key,
//! missing value or value out of range, never a silent default. Methods land here as their
//! policies are implemented.

use std::sync::Arc;

use candle_core::Device;
use longctx_kv::{FlexGenCache, FlexGenSettings, FullCache, KvCache, KvError, KvShape, RopeTable};

/// A parsed method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The uncompressed cache.
    Baseline,
    /// FlexGen's group-wise quantization of keys and values.
    FlexGen(FlexGenSettings),
}

/// A preset: a name that stands for a fully specified method (the paper's settings).
pub struct Preset {
    /// The name users type.
    pub name: &'static str,
    /// The spec it stands for.
    pub spec: &'static str,
    /// The method's school.
    pub school: &'static str,
}

/// Every preset, in listing order.
pub const PRESETS: [Preset; 2] = [
    Preset {
        name: "baseline",
        spec: "baseline",
        school: "none (full 16-bit-equivalent cache, stored as f32)",
    },
    Preset {
        name: "flexgen-4bit",
        spec: "flexgen:bits=4,group=32",
        school: "KV quantization",
    },
];

/// A spec that cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// The method name is unknown.
    #[error("unknown method \"{0}\"; run `longctx methods` for the list")]
    Unknown(String),
    /// A setting is malformed, unknown, missing or out of range.
    #[error("method \"{spec}\": {reason}")]
    Setting { spec: String, reason: String },
}

/// `key=value` pairs of a spec, each consumed once; leftovers are unknown keys.
struct Settings<'a> {
    spec: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Settings<'a> {
    fn parse(spec: &'a str, text: &'a str) -> Result<Self, MethodError> {
        let mut pairs = Vec::new();
        for item in text.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| MethodError::Setting {
                spec: spec.into(),
                reason: format!("\"{item}\" is not key=value"),
            })?;
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(MethodError::Setting {
                    spec: spec.into(),
                    reason: format!("key \"{k}\" is given twice"),
                });
            }
            pairs.push((k, v));
        }
        Ok(Self { spec, pairs })
    }

    fn take_u64(&mut self, key: &str) -> Result<u64, MethodError> {
        let at = self
            .pairs
            .iter()
            .position(|(k, _)| *k == key)
            .ok_or_else(|| MethodError::Setting {
                spec: self.spec.into(),
                reason: format!("missing required key \"{key}\""),
            })?;
        let (_, v) = self.pairs.remove(at);
        v.parse().map_err(|_| MethodError::Setting {
            spec: self.spec.into(),
            reason: format!("{key}={v} is not a whole number"),
        })
    }

    fn finish(self) -> Result<(), MethodError> {
        match self.pairs.first() {
            Some((k, _)) => Err(MethodError::Setting {
                spec: self.spec.into(),
                reason: format!("unknown key \"{k}\""),
            }),
            None => Ok(()),
        }
    }
}

impl Method {
    /// Parse a spec or preset name.
    pub fn parse(spec: &str) -> Result<Self, MethodError> {
        let expanded = PRESETS
            .iter()
            .find(|p| p.name == spec)
            .map_or(spec, |p| p.spec);
        let (name, rest) = expanded.split_once(':').unwrap_or((expanded, ""));
        let mut settings = Settings::parse(spec, rest)?;
        let method = match name {
            "baseline" => Method::Baseline,
            "flexgen" => {
                let bits = settings.take_u64("bits")?;
                let group = settings.take_u64("group")?;
                if ![2, 4, 8].contains(&bits) {
                    return Err(MethodError::Setting {
                        spec: spec.into(),
                        reason: format!("bits={bits} must be 2, 4 or 8"),
                    });
                }
                if group == 0 {
                    return Err(MethodError::Setting {
                        spec: spec.into(),
                        reason: "group must be positive".into(),
                    });
                }
                Method::FlexGen(FlexGenSettings {
                    bits: bits as u32,
                    group: group as usize,
                })
            }
            other => return Err(MethodError::Unknown(other.to_string())),
        };
        settings.finish()?;
        Ok(method)
    }

    /// The compression ratio the method's settings promise against a 16-bit cache.
    pub fn nominal_ratio(&self) -> f64 {
        match self {
            Method::Baseline => 1.0,
            Method::FlexGen(s) => s.nominal_ratio(),
        }
    }

    /// Build the method's cache for a model (settings that depend on the model, such as a
    /// group dividing the head dimension, are checked here).
    pub fn build_cache(
        &self,
        shape: KvShape,
        rope: Arc<RopeTable>,
    ) -> Result<Box<dyn KvCache>, KvError> {
        Ok(match self {
            Method::Baseline => Box::new(FullCache::new(shape, rope, &Device::Cpu)),
            Method::FlexGen(s) => Box::new(FlexGenCache::new(shape, rope, &Device::Cpu, *s)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_specs_parse() {
        assert_eq!(Method::parse("baseline").unwrap(), Method::Baseline);
        assert_eq!(
            Method::parse("flexgen-4bit").unwrap(),
            Method::FlexGen(FlexGenSettings { bits: 4, group: 32 })
        );
        assert_eq!(
            Method::parse("flexgen:group=64,bits=8").unwrap(),
            Method::FlexGen(FlexGenSettings { bits: 8, group: 64 })
        );
        assert!((Method::parse("flexgen-4bit").unwrap().nominal_ratio() - 3.2).abs() < 1e-12);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let err = |s: &str| Method::parse(s).unwrap_err().to_string();
        assert!(err("snapkv-5x").contains("unknown method \"snapkv-5x\""));
        assert!(err("flexgen:bits=4").contains("missing required key \"group\""));
        assert!(err("flexgen:bits=4,group=32,ratio=2").contains("unknown key \"ratio\""));
        assert!(err("flexgen:bits=3,group=32").contains("bits=3 must be 2, 4 or 8"));
        assert!(err("flexgen:bits=four,group=32").contains("bits=four is not a whole number"));
        assert!(err("flexgen:bits=4,bits=4,group=32").contains("given twice"));
        assert!(err("flexgen:bits").contains("not key=value"));
        assert!(err("baseline:bits=4").contains("unknown key \"bits\""));
    }
}
