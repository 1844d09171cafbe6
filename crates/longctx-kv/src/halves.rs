//! f16 to f32 conversion that vectorizes on any CPU, for the portable kernels (of
//! attention here and of the models' weight blocks).

/// An f16 given by its bits, as f32, without branches (so that loops of it vectorize, which
/// `half`'s conversion does not): the exponent and mantissa shifted into f32 position, then
/// scaled by 2^112 to rebias (subnormals come out normalized); infinities and NaNs keep an
/// all-ones exponent.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let shifted = (h & 0x7fff) << 13;
    let rebiased = f32::from_bits(shifted) * f32::from_bits(0x7780_0000);
    let magnitude = if h & 0x7c00 == 0x7c00 {
        shifted | 0x7f80_0000
    } else {
        rebiased.to_bits()
    };
    f32::from_bits(((h & 0x8000) << 16) | magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn f16_conversion_equals_half_for_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let (got, want) = (f16_bits_to_f32(bits), f16::from_bits(bits).to_f32());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{bits:#06x}: {got} vs {want}"
            );
        }
    }
}
