//! A cache made of caches, each serving some of a model's layers. Gemma-3's local layers
//! attend within a sliding window under their own RoPE base while its global layers run the
//! method under study: each group of layers gets its own cache (so its own policy, RoPE
//! table and bounds), and a layer is routed to its group's cache under its index within the
//! group. Bytes are counted over every group, and reported per group.

use candle_core::Tensor;

use crate::{KvCache, KvError, KvShape, Reservation, Result};

/// Some of a model's layers and the cache serving them.
pub struct LayerGroup {
    /// What the group is ("local", "global"), for byte reports.
    pub name: &'static str,
    /// The model's layer indices, ascending; the cache's layer `i` is `layers[i]`.
    pub layers: Vec<usize>,
    /// The cache, built for `layers.len()` layers.
    pub cache: Box<dyn KvCache>,
}

/// Layer groups behind one [`KvCache`].
pub struct GroupedCache {
    groups: Vec<LayerGroup>,
    /// For each model layer: its group and its index there.
    route: Vec<(usize, usize)>,
    shape: KvShape,
}

impl GroupedCache {
    /// Groups covering layers `0..n` exactly once, each cache built for its group's layer
    /// count, all with one head geometry.
    pub fn new(groups: Vec<LayerGroup>) -> Result<Self> {
        let layers: usize = groups.iter().map(|g| g.layers.len()).sum();
        let mut route = vec![None; layers];
        for (g, group) in groups.iter().enumerate() {
            let shape = group.cache.shape();
            if shape.layers != group.layers.len() {
                return Err(KvError::Invalid(format!(
                    "the {} group's cache has {} layers for {} model layers",
                    group.name,
                    shape.layers,
                    group.layers.len()
                )));
            }
            for (inner, &layer) in group.layers.iter().enumerate() {
                match route.get_mut(layer) {
                    Some(slot @ None) => *slot = Some((g, inner)),
                    _ => {
                        return Err(KvError::Invalid(format!(
                            "layer {layer} of a {layers}-layer model is in no group or in two"
                        )))
                    }
                }
            }
        }
        let first = groups
            .first()
            .ok_or_else(|| KvError::Invalid("no layer groups".into()))?
            .cache
            .shape();
        if let Some(other) = groups.iter().map(|g| g.cache.shape()).find(|s| {
            (s.q_heads, s.kv_heads, s.head_dim) != (first.q_heads, first.kv_heads, first.head_dim)
        }) {
            return Err(KvError::Invalid(format!(
                "layer groups differ in head geometry ({first:?} and {other:?})"
            )));
        }
        Ok(Self {
            route: route.into_iter().map(|r| r.expect("covered")).collect(),
            shape: KvShape { layers, ..first },
            groups,
        })
    }

    fn routed(&self, layer: usize) -> Option<(&dyn KvCache, usize)> {
        let &(g, inner) = self.route.get(layer)?;
        Some((self.groups[g].cache.as_ref(), inner))
    }
}

impl KvCache for GroupedCache {
    fn shape(&self) -> KvShape {
        self.shape
    }

    fn reserve(&mut self, reservation: Reservation) -> Result<()> {
        self.groups
            .iter_mut()
            .try_for_each(|g| g.cache.reserve(reservation))
    }

    fn attend(
        &mut self,
        layer: usize,
        pos: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let &(g, inner) = self.route.get(layer).ok_or_else(|| {
            KvError::Invalid(format!(
                "layer {layer} of a {}-layer cache",
                self.shape.layers
            ))
        })?;
        self.groups[g].cache.attend(inner, pos, q, k, v)
    }

    /// Only when every group streams can an input outrun the model's context.
    fn streams(&self) -> bool {
        self.groups.iter().all(|g| g.cache.streams())
    }

    fn end_prefill(&mut self) -> Result<()> {
        self.groups
            .iter_mut()
            .try_for_each(|g| g.cache.end_prefill())
    }

    fn stored_bytes(&self) -> usize {
        self.groups.iter().map(|g| g.cache.stored_bytes()).sum()
    }

    fn stored_bytes_by_group(&self) -> Vec<(&'static str, usize)> {
        self.groups
            .iter()
            .map(|g| (g.name, g.cache.stored_bytes()))
            .collect()
    }

    fn offloaded_bytes(&self) -> usize {
        self.groups.iter().map(|g| g.cache.offloaded_bytes()).sum()
    }

    fn uncompressed_bytes_per_token(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.cache.uncompressed_bytes_per_token())
            .sum()
    }

    fn kept_tokens(&self, layer: usize) -> usize {
        self.routed(layer)
            .map_or(0, |(cache, inner)| cache.kept_tokens(inner))
    }

    fn kept_positions(&self, layer: usize, kv_head: usize) -> Option<Vec<usize>> {
        let (cache, inner) = self.routed(layer)?;
        cache.kept_positions(inner, kv_head)
    }

    fn reset(&mut self) {
        self.groups.iter_mut().for_each(|g| g.cache.reset());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{
        Budget, DropPolicy, DropSettings, DroppingCache, FullCache, KvPrecision, Selection, Sinks,
    };
    use candle_core::Device;

    fn window(layers: usize, tokens: usize) -> Box<dyn KvCache> {
        let settings = DropSettings {
            selection: Selection::PerHead,
            schedule: crate::Schedule::Uniform,
            decoding: None,
            policy: DropPolicy::StreamingLlm {
                sinks: Sinks::Count(0),
                reindex: false,
            },
            budget: Budget::Tokens(tokens),
        };
        let shape = KvShape { layers, ..shape() };
        Box::new(
            DroppingCache::new(shape, rope(), &Device::Cpu, settings, KvPrecision::F32).unwrap(),
        )
    }

    fn full(layers: usize) -> Box<dyn KvCache> {
        Box::new(FullCache::new(
            KvShape { layers, ..shape() },
            rope(),
            &Device::Cpu,
            KvPrecision::F32,
        ))
    }

    /// Layers 0 and 2 full, layer 1 in a 6-token window: each layer's outputs equal its own
    /// cache's, bytes add up and are reported per group.
    #[test]
    fn each_layer_attends_as_its_groups_cache() {
        let data = sequence(20);
        let mut grouped = GroupedCache::new(vec![
            LayerGroup {
                name: "global",
                layers: vec![0, 2],
                cache: full(2),
            },
            LayerGroup {
                name: "local",
                layers: vec![1],
                cache: window(1, 6),
            },
        ])
        .unwrap();
        assert_eq!(grouped.shape().layers, 3);
        let (q, k, v) = &data;
        grouped.reserve(Reservation::prompt(12, 8)).unwrap();
        let (mut alone_full, mut alone_window) = (full(1), window(1, 6));
        alone_full.reserve(Reservation::prompt(12, 8)).unwrap();
        alone_window.reserve(Reservation::prompt(12, 8)).unwrap();
        let spans = [(0, 12)].into_iter().chain((12..20).map(|p| (p, 1)));
        for (start, len) in spans {
            let part = |x: &Tensor| x.narrow(1, start, len).unwrap();
            let (q, k, v) = (part(q), part(k), part(v));
            let outs: Vec<Tensor> = (0..3)
                .map(|l| grouped.attend(l, start, &q, &k, &v).unwrap())
                .collect();
            let want_full = alone_full.attend(0, start, &q, &k, &v).unwrap();
            let want_window = alone_window.attend(0, start, &q, &k, &v).unwrap();
            if start + len == 12 {
                grouped.end_prefill().unwrap();
                alone_full.end_prefill().unwrap();
                alone_window.end_prefill().unwrap();
            }
            let diff = |a: &Tensor, b: Tensor| max_difference(std::slice::from_ref(a), &[b]);
            assert_eq!(diff(&outs[0], want_full.clone()), 0.0);
            assert_eq!(diff(&outs[2], want_full), 0.0);
            assert_eq!(diff(&outs[1], want_window), 0.0);
        }
        assert_eq!(grouped.kept_tokens(0), 20);
        assert_eq!(grouped.kept_tokens(1), 6);
        let by_group = grouped.stored_bytes_by_group();
        assert_eq!(by_group.len(), 2);
        assert_eq!(
            by_group.iter().map(|(_, b)| b).sum::<usize>(),
            grouped.stored_bytes()
        );
        assert!(!grouped.streams(), "the full group does not stream");
    }

    #[test]
    fn groups_must_cover_every_layer_once() {
        let group = |layers: Vec<usize>| LayerGroup {
            name: "g",
            cache: full(layers.len()),
            layers,
        };
        assert!(GroupedCache::new(vec![group(vec![0]), group(vec![0])]).is_err());
        assert!(GroupedCache::new(vec![group(vec![0]), group(vec![2])]).is_err());
        assert!(GroupedCache::new(vec![LayerGroup {
            name: "g",
            layers: vec![0, 1],
            cache: full(1),
        }])
        .is_err());
        assert!(GroupedCache::new(Vec::new()).is_err());
        assert!(GroupedCache::new(vec![group(vec![1]), group(vec![0])]).is_ok());
    }
}
