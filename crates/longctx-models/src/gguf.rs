//! A bounds-checked GGUF reader: every length and offset in the file is checked against the
//! file's size before use, so a truncated or corrupt file is an error, never a panic, an
//! out-of-bounds read or an absurd allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::Device;
use memmap2::Mmap;

use crate::{ModelError, Result};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned or signed integer type, widened.
    Int(i128),
    /// f32 or f64, widened.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values of one type.
    Array(Vec<MetaValue>),
}

/// Where one tensor lies in the file and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Dimensions in GGUF order (fastest-varying first).
    pub dims: Vec<usize>,
    /// Storage type.
    pub dtype: GgmlDType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub size: usize,
}

/// An opened GGUF file: parsed metadata and tensor directory over a memory map.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// Metadata key/value pairs.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor directory by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {n} bytes at offset {} but the file has {}",
                    self.at,
                    self.bytes.len()
                )
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count that must be satisfiable by the bytes left (each item takes ≥ `min_item` bytes).
    fn count(&mut self, what: &str, min_item: usize) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(format!(
                "corrupt: {what} claims {n} items but only {left} bytes remain"
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.count(what, 1)?;
        String::from_utf8(self.take(n, what)?.to_vec())
            .map_err(|_| format!("corrupt: {what} is not UTF-8"))
    }
    fn value(
        &mut self,
        kind: u32,
        key: &str,
        depth: usize,
    ) -> std::result::Result<MetaValue, String> {
        let mut int = |n: usize, signed: bool| -> std::result::Result<MetaValue, String> {
            let b = self.take(n, key)?;
            let mut raw = [0u8; 8];
            raw[..n].copy_from_slice(b);
            let unsigned = u64::from_le_bytes(raw) as i128;
            let shift = 64 - 8 * n as u32;
            Ok(MetaValue::Int(if signed {
                ((unsigned as i64) << shift >> shift) as i128
            } else {
                unsigned
            }))
        };
        Ok(match kind {
            0 => int(1, false)?,
            1 => int(1, true)?,
            2 => int(2, false)?,
            3 => int(2, true)?,
            4 => int(4, false)?,
            5 => int(4, true)?,
            10 => int(8, false)?,
            11 => int(8, true)?,
            6 => MetaValue::Float(f32::from_le_bytes(
                self.take(4, key)?.try_into().expect("4 bytes"),
            ) as f64),
            12 => MetaValue::Float(f64::from_le_bytes(
                self.take(8, key)?.try_into().expect("8 bytes"),
            )),
            7 => MetaValue::Bool(self.take(1, key)?[0] != 0),
            8 => MetaValue::Str(self.string(key)?),
            9 if depth < 2 => {
                let item_kind = self.u32(key)?;
                let n = self.count(key, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_kind, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            other => {
                return Err(format!(
                    "corrupt: metadata {key} has unknown value type {other}"
                ))
            }
        })
    }
}

fn ggml_dtype(code: u32) -> Option<GgmlDType> {
    Some(match code {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

impl GgufFile {
    /// Open and validate a GGUF file: header, metadata, tensor directory and data bounds.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?;
        // SAFETY: the map is read-only and the file is not modified by this process; a file
        // truncated underneath a running process is outside what any reader can guard.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?;
        let bad = |reason: String| ModelError::BadGguf {
            path: path.into(),
            reason,
        };
        let (metadata, tensors) = Self::parse(&map).map_err(bad)?;
        Ok(Self {
            path: path.into(),
            map,
            metadata,
            tensors,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse(
        bytes: &[u8],
    ) -> std::result::Result<(BTreeMap<String, MetaValue>, BTreeMap<String, TensorInfo>), String>
    {
        let mut c = Cursor { bytes, at: 0 };
        if c.take(4, "magic")? != b"GGUF" {
            return Err("the file does not start with the GGUF magic bytes".into());
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            ));
        }
        let tensor_count = c.count("tensor count", 24)?;
        let kv_count = c.count("metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(format!("corrupt: tensor {name} has {n_dims} dimensions"));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&name).map(|d| d as usize))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let code = c.u32(&name)?;
            let dtype = ggml_dtype(code).ok_or_else(|| {
                format!("tensor {name} has storage type {code}, which is not supported")
            })?;
            let offset = c.u64(&name)? as usize;
            infos.push((name, dims, dtype, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(MetaValue::Int(a)) if *a > 0 && *a % 8 == 0 && *a <= 1 << 20 => *a as usize,
            Some(other) => {
                return Err(format!(
                    "general.alignment {other:?} must be a positive multiple of 8"
                ))
            }
            None => 32,
        };
        let data_start = c.at.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, dtype, offset) in infos {
            let elems = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| format!("corrupt: tensor {name} is impossibly large"))?;
            if elems % dtype.block_size() != 0 {
                return Err(format!("corrupt: tensor {name} has {elems} elements, not a whole number of {dtype:?} blocks"));
            }
            let size = elems / dtype.block_size() * dtype.type_size();
            let start = data_start
                .checked_add(offset)
                .filter(|s| s % 8 == 0)
                .ok_or_else(|| format!("corrupt: tensor {name} has a misaligned offset"))?;
            let end = start.saturating_add(size);
            if end > bytes.len() {
                return Err(format!(
                    "truncated: tensor {name} needs bytes up to {end} but the file has {} (re-download the file)",
                    bytes.len()
                ));
            }
            tensors.insert(
                name,
                TensorInfo {
                    dims,
                    dtype,
                    offset: start,
                    size,
                },
            );
        }
        Ok((metadata, tensors))
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&MetaValue> {
        self.metadata.get(key).ok_or_else(|| ModelError::BadGguf {
            path: self.path.clone(),
            reason: format!("metadata key {key} is missing"),
        })
    }

    /// An integer metadata value.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        match self.get(key)? {
            MetaValue::Int(v) if *v >= 0 => Ok(*v as usize),
            other => Err(self.wrong_type(key, "a non-negative integer", other)),
        }
    }

    /// A float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            MetaValue::Float(v) => Ok(*v),
            MetaValue::Int(v) => Ok(*v as f64),
            other => Err(self.wrong_type(key, "a number", other)),
        }
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            MetaValue::Str(v) => Ok(v),
            other => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// An array of strings (tokenizer vocabularies and merges).
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key)? {
            MetaValue::Array(items) => items
                .iter()
                .map(|v| match v {
                    MetaValue::Str(s) => Ok(s.as_str()),
                    other => Err(self.wrong_type(key, "an array of strings", other)),
                })
                .collect(),
            other => Err(self.wrong_type(key, "an array of strings", other)),
        }
    }

    /// An array of numbers (SentencePiece scores).
    pub fn get_floats(&self, key: &str) -> Result<Vec<f64>> {
        match self.get(key)? {
            MetaValue::Array(items) => items
                .iter()
                .map(|v| match v {
                    MetaValue::Float(x) => Ok(*x),
                    MetaValue::Int(i) => Ok(*i as f64),
                    other => Err(self.wrong_type(key, "an array of numbers", other)),
                })
                .collect(),
            other => Err(self.wrong_type(key, "an array of numbers", other)),
        }
    }

    /// An array of integers (token types).
    pub fn get_ints(&self, key: &str) -> Result<Vec<i128>> {
        match self.get(key)? {
            MetaValue::Array(items) => items
                .iter()
                .map(|v| match v {
                    MetaValue::Int(i) => Ok(*i),
                    other => Err(self.wrong_type(key, "an array of integers", other)),
                })
                .collect(),
            other => Err(self.wrong_type(key, "an array of integers", other)),
        }
    }

    fn wrong_type(&self, key: &str, want: &str, got: &MetaValue) -> ModelError {
        let shown = format!("{got:?}");
        ModelError::BadGguf {
            path: self.path.clone(),
            reason: format!(
                "metadata {key} should be {want}, found {}",
                &shown[..shown.len().min(60)]
            ),
        }
    }

    /// Load a tensor in its stored quantization; dims are returned in row-major order.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.tensors.get(name).ok_or_else(|| ModelError::BadGguf {
            path: self.path.clone(),
            reason: format!("tensor {name} is missing"),
        })?;
        let raw = &self.map[info.offset..info.offset + info.size];
        let dims: Vec<usize> = info.dims.iter().rev().copied().collect();
        Ok(qtensor_from_ggml(info.dtype, raw, dims, device)?)
    }

    /// A tensor's dimensions in row-major order, from the tensor table (no data read).
    pub fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|info| info.dims.iter().rev().copied().collect())
    }

    /// Whether the file has a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid GGUF: one u32 metadata entry and one 4×2 f32 tensor.
    pub(crate) fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        let name = b"w";
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..8 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    fn write(bytes: &[u8]) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("m.gguf");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// A throwaway directory removed on drop (no extra dependency for one test helper).
    pub(crate) mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "longctx-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let (_d, path) = write(&tiny_gguf());
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        let t = g.tensor("w", &Device::Cpu).unwrap();
        assert_eq!(t.shape().dims(), &[2, 4]);
        let v: Vec<f32> = t
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, (0..8).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        for cut in 0..full.len() {
            let (_d, path) = write(&full[..cut]);
            match GgufFile::open(&path) {
                Err(ModelError::BadGguf { reason, .. }) => assert!(!reason.is_empty()),
                Err(other) => panic!("cut at {cut}: unexpected error {other}"),
                Ok(_) => panic!("cut at {cut}: a truncated file was accepted"),
            }
        }
    }

    #[test]
    fn absurd_counts_are_rejected_without_allocating() {
        let mut bytes = tiny_gguf();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let (_d, path) = write(&bytes);
        let err = GgufFile::open(&path).err().expect("must fail").to_string();
        assert!(err.contains("tensor count"), "{err}");
    }

    #[test]
    fn not_gguf_is_named() {
        let (_d, path) = write(b"PK\x03\x04 this is a zip");
        let err = GgufFile::open(&path).err().expect("must fail").to_string();
        assert!(err.contains("magic"), "{err}");
    }
}
