//! A small deterministic generator (splitmix64), so generated tasks need no dependency and
//! never change across versions or machines.

/// One splitmix64 step: a well-mixed function of `x`.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A stream of pseudo-random numbers from a seed and a path of indices.
pub struct Rng(u64);

impl Rng {
    /// A stream determined by `seed` and `path` (task, sample, …), independent across paths.
    pub fn new(seed: u64, path: &[u64]) -> Self {
        Self(
            path.iter()
                .rev()
                .fold(seed, |acc, p| splitmix(acc ^ splitmix(*p))),
        )
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` decimal digits.
    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    /// A version-4 UUID, as Python's `uuid.UUID(int=random.getrandbits(128), version=4)`
    /// writes it: 128 random bits with the version and variant bits set.
    pub fn uuid4(&mut self) -> String {
        let bits = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        let bits = (bits & !(0xF000u128 << 64)) | (0x4000u128 << 64);
        let bits = (bits & !(0xC000u128 << 48)) | (0x8000u128 << 48);
        let hex = format!("{bits:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}
