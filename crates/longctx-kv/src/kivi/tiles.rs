//! KIVI's packed codes, laid out for the decoding kernel's byte dot products.
//!
//! Both layouts are made of 64-byte *units*: 16 lanes of 4 bytes, each byte holding
//! `8 / bits` codes. Shifting a unit by `bits · s` and masking gives *plane* `s`: one code
//! per byte. A byte dot product (`vpdpbusd`, or `vpmaddubsw` + `vpmaddwd`) of a plane with
//! four signed weights broadcast to every lane adds to each lane four code × weight
//! products, so what a lane sums is fixed by the layout:
//!
//! - **keys** ([`KeyTiles`]), quantized per channel over blocks of `group` tokens: a lane is
//!   a token and its bytes are channels, so the dot products give scores against a query
//!   whose channels carry the block's scales;
//! - **values** ([`ValueTiles`]), quantized per token over groups of channels: a lane is a
//!   channel and its bytes are tokens, so the dot products give output channels summed
//!   over tokens whose weights (softmax probabilities) carry the tokens' scales.
//!
//! Quantization itself (asymmetric min–max, f16 minimum and scale, round half to even) is
//! [`quantize_group`], shared with the min–max row format (FlexGen's).

use half::f16;

use crate::cache::growth_step;
use crate::row_formats::quantize_group;

/// Packed codes and each group's f16 minimum and scale: the storage every packed layout
/// (KIVI's key and value tiles) is made of.
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedStore {
    pub codes: Vec<u8>,
    pub mins: Vec<f16>,
    pub scales: Vec<f16>,
}

impl PackedStore {
    /// Reserve room for `codes` more code bytes and `groups` more groups.
    pub fn reserve(&mut self, codes: usize, groups: usize) {
        self.codes.reserve_exact(codes);
        self.mins.reserve_exact(groups);
        self.scales.reserve_exact(groups);
    }

    /// Bytes held by codes, minima and scales (allocated capacity included).
    pub fn bytes(&self) -> usize {
        self.codes.capacity() + 2 * (self.mins.capacity() + self.scales.capacity())
    }

    /// Forget everything, keeping allocations.
    pub fn clear(&mut self) {
        self.codes.clear();
        self.mins.clear();
        self.scales.clear();
    }
}

/// Lanes of a unit.
pub(crate) const LANES: usize = 16;
/// Bytes of a unit.
pub(crate) const UNIT: usize = 64;

/// Codes per byte for `bits`-bit codes.
pub(crate) fn per_byte(bits: u32) -> usize {
    8 / bits as usize
}

/// The byte and shift of code `(lane, slot)` within a unit: `slot` counts the lane's
/// `4 · per_byte` codes, plane by plane (four bytes a plane).
fn place(bits: u32, lane: usize, slot: usize) -> (usize, u32) {
    (lane * 4 + slot % 4, bits * (slot / 4) as u32)
}

fn code_at(codes: &[u8], bits: u32, at: (usize, u32)) -> u8 {
    (codes[at.0] >> at.1) & ((1u16 << bits) - 1) as u8
}

/// Keys quantized per channel over blocks of `group` tokens. A block is `group / 16`
/// tiles of 16 tokens; a tile is `width / (4 · per_byte)` units, unit `u` holding channels
/// `u · 4 · per_byte ..` of the tile's tokens. Minima and scales are `[block][channel]`.
#[derive(Debug, Clone)]
pub(crate) struct KeyTiles {
    bits: u32,
    group: usize,
    width: usize,
    store: PackedStore,
    blocks: usize,
}

impl KeyTiles {
    /// Empty storage; `group` is a multiple of 16 and `width` of `4 · per_byte(bits)`.
    pub fn new(bits: u32, group: usize, width: usize) -> Self {
        debug_assert!(group.is_multiple_of(LANES) && width.is_multiple_of(4 * per_byte(bits)));
        Self {
            bits,
            group,
            width,
            store: PackedStore::default(),
            blocks: 0,
        }
    }

    /// Tokens per block.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Bytes of one block's codes.
    pub fn block_bytes(&self) -> usize {
        self.group * self.width * self.bits as usize / 8
    }

    /// Units per 16-token tile.
    pub fn units(&self) -> usize {
        self.width / (4 * per_byte(self.bits))
    }

    /// Reserve room for `blocks` more blocks.
    pub fn reserve(&mut self, blocks: usize) {
        let (codes, groups) = (blocks * self.block_bytes(), blocks * self.width);
        self.store.reserve(codes, groups);
    }

    /// Quantize and append one block: `group` token rows of `width`, row-major.
    pub fn push_block(&mut self, keys: &[f32]) {
        debug_assert_eq!(keys.len(), self.group * self.width);
        if self.store.codes.len() + self.block_bytes() > self.store.codes.capacity() {
            self.reserve(growth_step(self.blocks));
        }
        let base = self.store.codes.len();
        self.store.codes.resize(base + self.block_bytes(), 0);
        let (bits, units, slots) = (self.bits, self.units(), 4 * per_byte(self.bits));
        let mut channel = vec![0f32; self.group];
        for c in 0..self.width {
            for (j, x) in channel.iter_mut().enumerate() {
                *x = keys[j * self.width + c];
            }
            let codes = &mut self.store.codes[base..];
            let (min, scale) = quantize_group(&channel, bits, |j, code| {
                let unit = (j / LANES * units + c / slots) * UNIT;
                let (byte, shift) = place(bits, j % LANES, c % slots);
                codes[unit + byte] |= code << shift;
            });
            self.store.mins.push(min);
            self.store.scales.push(scale);
        }
        self.blocks += 1;
    }

    /// Tokens held (whole blocks).
    pub fn tokens(&self) -> usize {
        self.blocks * self.group
    }

    /// Block `b`'s codes.
    pub fn block(&self, b: usize) -> &[u8] {
        &self.store.codes[b * self.block_bytes()..(b + 1) * self.block_bytes()]
    }

    /// Block `b`'s per-channel minima and scales.
    pub fn min_scale(&self, b: usize) -> (&[f16], &[f16]) {
        let range = b * self.width..(b + 1) * self.width;
        (&self.store.mins[range.clone()], &self.store.scales[range])
    }

    /// Every token's key as stored, dequantized, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let slots = 4 * per_byte(self.bits);
        let mut out = Vec::with_capacity(self.tokens() * self.width);
        for b in 0..self.blocks {
            let (codes, (mins, scales)) = (self.block(b), self.min_scale(b));
            for j in 0..self.group {
                for c in 0..self.width {
                    let unit = (j / LANES * self.units() + c / slots) * UNIT;
                    let (byte, shift) = place(self.bits, j % LANES, c % slots);
                    let code = code_at(&codes[unit..], self.bits, (byte, shift));
                    out.push(mins[c].to_f32() + code as f32 * scales[c].to_f32());
                }
            }
        }
        out
    }

    /// Bytes held by codes, minima and scales (allocated capacity included).
    pub fn bytes(&self) -> usize {
        self.store.bytes()
    }

    /// Forget every block, keeping allocations.
    pub fn clear(&mut self) {
        self.store.clear();
        self.blocks = 0;
    }
}

/// Values quantized per token over groups of `group` channels. A block is
/// `4 · per_byte(bits)` tokens (its *slots*) and `width / 16` units, unit `u` holding
/// channels `16u ..` of the block's tokens. Minima and scales are `[block][group][slot]`;
/// a block is allocated whole (zero codes, scales and minima) when its first token comes.
#[derive(Debug, Clone)]
pub(crate) struct ValueTiles {
    bits: u32,
    group: usize,
    width: usize,
    store: PackedStore,
    rows: usize,
}

impl ValueTiles {
    /// Empty storage; `group` is a multiple of 16 dividing `width`.
    pub fn new(bits: u32, group: usize, width: usize) -> Self {
        debug_assert!(group.is_multiple_of(LANES) && width.is_multiple_of(group));
        Self {
            bits,
            group,
            width,
            store: PackedStore::default(),
            rows: 0,
        }
    }

    /// Tokens per block.
    pub fn slots(&self) -> usize {
        4 * per_byte(self.bits)
    }

    /// Channels per group.
    pub fn group(&self) -> usize {
        self.group
    }

    fn groups(&self) -> usize {
        self.width / self.group
    }

    /// Bytes of one block's codes: four per channel.
    pub fn block_bytes(&self) -> usize {
        4 * self.width
    }

    /// Reserve room for `rows` more rows (whole blocks).
    pub fn reserve(&mut self, rows: usize) {
        let blocks = rows.div_ceil(self.slots());
        let codes = blocks * self.block_bytes();
        self.store
            .reserve(codes, blocks * self.groups() * self.slots());
    }

    /// Quantize and append one token's row of `width` values.
    pub fn push(&mut self, row: &[f32]) {
        debug_assert_eq!(row.len(), self.width);
        let (block, slot) = (self.rows / self.slots(), self.rows % self.slots());
        if slot == 0 {
            if self.store.codes.len() + self.block_bytes() > self.store.codes.capacity() {
                self.reserve(growth_step(self.rows));
            }
            self.store
                .codes
                .resize(self.store.codes.len() + self.block_bytes(), 0);
            let extra = self.groups() * self.slots();
            self.store
                .mins
                .resize(self.store.mins.len() + extra, f16::ZERO);
            self.store
                .scales
                .resize(self.store.scales.len() + extra, f16::ZERO);
        }
        let (bits, group, groups, slots) = (self.bits, self.group, self.groups(), self.slots());
        let base = block * self.block_bytes();
        for (g, values) in row.chunks_exact(group).enumerate() {
            let codes = &mut self.store.codes[base..];
            let (min, scale) = quantize_group(values, bits, |i, code| {
                let c = g * group + i;
                let (byte, shift) = place(bits, c % LANES, slot);
                codes[c / LANES * UNIT + byte] |= code << shift;
            });
            let at = (block * groups + g) * slots + slot;
            self.store.mins[at] = min;
            self.store.scales[at] = scale;
        }
        self.rows += 1;
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Block `b`'s codes.
    pub fn block(&self, b: usize) -> &[u8] {
        &self.store.codes[b * self.block_bytes()..(b + 1) * self.block_bytes()]
    }

    /// Block `b`'s minima and scales for channel group `g`, one per slot.
    pub fn min_scale(&self, b: usize, g: usize) -> (&[f16], &[f16]) {
        let start = (b * self.groups() + g) * self.slots();
        let range = start..start + self.slots();
        (&self.store.mins[range.clone()], &self.store.scales[range])
    }

    /// Every row dequantized, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.width);
        for r in 0..self.rows {
            let (b, slot) = (r / self.slots(), r % self.slots());
            let codes = self.block(b);
            for c in 0..self.width {
                let (mins, scales) = self.min_scale(b, c / self.group);
                let (byte, shift) = place(self.bits, c % LANES, slot);
                let code = code_at(&codes[c / LANES * UNIT..], self.bits, (byte, shift));
                out.push(mins[slot].to_f32() + code as f32 * scales[slot].to_f32());
            }
        }
        out
    }

    /// Bytes held by codes, minima and scales (allocated capacity included).
    pub fn bytes(&self) -> usize {
        self.store.bytes()
    }

    /// Forget every row, keeping allocations.
    pub fn clear(&mut self) {
        self.store.clear();
        self.rows = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise as random;
    use crate::{QuantRows, RowFormat};

    /// The tiled layouts decode to what row-wise packing of the same groups decodes to.
    #[test]
    fn tiles_hold_what_rows_hold() {
        for bits in [2, 4, 8] {
            let (group, width, tokens) = (32, 64, 96);
            let data = random(tokens * width, bits as u64);
            let mut keys = KeyTiles::new(bits, group, width);
            let mut channel_rows = QuantRows::new(RowFormat::MinMax { bits, group }, group);
            for block in data.chunks_exact(group * width) {
                keys.push_block(block);
                for c in 0..width {
                    let channel: Vec<f32> = (0..group).map(|j| block[j * width + c]).collect();
                    channel_rows.push(&channel);
                }
            }
            let by_channel = channel_rows.dequantize();
            let tiled = keys.dequantize();
            for t in 0..tokens {
                for c in 0..width {
                    let (b, j) = (t / group, t % group);
                    assert_eq!(
                        tiled[t * width + c],
                        by_channel[(b * width + c) * group + j]
                    );
                }
            }
            // Values: a partial last block too.
            let mut values = ValueTiles::new(bits, group, width);
            let mut rows = QuantRows::new(RowFormat::MinMax { bits, group }, width);
            for row in data.chunks_exact(width).take(tokens - 3) {
                values.push(row);
                rows.push(row);
            }
            assert_eq!(values.dequantize(), rows.dequantize());
            assert_eq!(values.rows(), tokens - 3);
        }
    }
}
