//! GGUF (v2/v3) reading and streaming writing, enough for quantizing and for writing large
//! random-weight test models.
//!
//! Invariants:
//! - Metadata key/values are kept as their raw encoded bytes, in file order, so a file that is
//!   read and written back carries every key/value byte for byte (the quantizer only replaces
//!   `general.quantization_version` and `general.file_type`, as llama.cpp's quantizer does).
//! - Tensor data offsets are relative to the aligned start of the data section; every tensor
//!   is padded with zeros to the file's alignment (`general.alignment`, default 32).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Default GGUF alignment.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Errors of reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file is not a GGUF file this code understands.
    #[error("invalid GGUF: {0}")]
    Invalid(String),
}

/// A ggml tensor type (the subset that appears in model files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, 32-blocks, scale.
    Q4_0,
    /// 4-bit, 32-blocks, scale + min.
    Q4_1,
    /// 5-bit, 32-blocks, scale.
    Q5_0,
    /// 5-bit, 32-blocks, scale + min.
    Q5_1,
    /// 8-bit, 32-blocks, scale.
    Q8_0,
    /// 8-bit, 32-blocks, scale + sum.
    Q8_1,
    /// 2-bit k-quant.
    Q2_K,
    /// 3-bit k-quant.
    Q3_K,
    /// 4-bit k-quant.
    Q4_K,
    /// 5-bit k-quant.
    Q5_K,
    /// 6-bit k-quant.
    Q6_K,
    /// 8-bit k-quant.
    Q8_K,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
}

/// (type, ggml id, name, block size, bytes per block).
const TYPES: [(GgmlType, u32, &str, u64, u64); 20] = [
    (GgmlType::F32, 0, "f32", 1, 4),
    (GgmlType::F16, 1, "f16", 1, 2),
    (GgmlType::Q4_0, 2, "q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "q8_1", 32, 36),
    (GgmlType::Q2_K, 10, "q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "q8_K", 256, 292),
    (GgmlType::I8, 24, "i8", 1, 1),
    (GgmlType::I16, 25, "i16", 1, 2),
    (GgmlType::I32, 26, "i32", 1, 4),
    (GgmlType::I64, 27, "i64", 1, 8),
    (GgmlType::F64, 28, "f64", 1, 8),
    (GgmlType::BF16, 30, "bf16", 1, 2),
];

impl GgmlType {
    fn entry(self) -> (GgmlType, u32, &'static str, u64, u64) {
        TYPES
            .into_iter()
            .find(|e| e.0 == self)
            .unwrap_or((self, 0, "?", 1, 1))
    }

    /// The type with ggml id `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// ggml's name (`q4_K`, `f16`, …).
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Values per block.
    pub fn block_size(self) -> u64 {
        self.entry().3
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.entry().4
    }

    /// Bytes of a row of `n` values (`n` a multiple of the block size).
    pub fn row_bytes(self, n: u64) -> u64 {
        n / self.block_size() * self.block_bytes()
    }

    /// Whether this is a block-quantized type.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
}

/// One metadata key/value, kept encoded (value type id + value bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The encoded value: the GGUF value type (u32 LE) followed by the value.
    pub raw: Vec<u8>,
}

fn enc_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Kv {
    fn new(key: &str, ty: u32, value: &[u8]) -> Self {
        let mut raw = ty.to_le_bytes().to_vec();
        raw.extend_from_slice(value);
        Self {
            key: key.to_owned(),
            raw,
        }
    }

    /// A `uint32` value.
    pub fn u32(key: &str, v: u32) -> Self {
        Self::new(key, 4, &v.to_le_bytes())
    }

    /// An `int32` value.
    pub fn i32(key: &str, v: i32) -> Self {
        Self::new(key, 5, &v.to_le_bytes())
    }

    /// A `float32` value.
    pub fn f32(key: &str, v: f32) -> Self {
        Self::new(key, 6, &v.to_le_bytes())
    }

    /// A `bool` value.
    pub fn bool(key: &str, v: bool) -> Self {
        Self::new(key, 7, &[u8::from(v)])
    }

    /// A `string` value.
    pub fn str(key: &str, v: &str) -> Self {
        let mut b = Vec::new();
        enc_str(&mut b, v);
        Self::new(key, 8, &b)
    }

    /// An array of strings.
    pub fn str_array<S: AsRef<str>>(key: &str, items: &[S]) -> Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            enc_str(&mut b, s.as_ref());
        }
        Self::new(key, 9, &b)
    }

    /// An array of `int32`.
    pub fn i32_array(key: &str, items: &[i32]) -> Self {
        let mut b = 5u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for v in items {
            b.extend_from_slice(&v.to_le_bytes());
        }
        Self::new(key, 9, &b)
    }

    /// The value as an unsigned integer (any integer type).
    pub fn as_u64(&self) -> Option<u64> {
        let ty = u32::from_le_bytes(self.raw.get(..4)?.try_into().ok()?);
        let v = &self.raw[4..];
        let le = |n: usize| -> Option<u64> {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(v.get(..n)?);
            Some(u64::from_le_bytes(b))
        };
        match ty {
            0 | 1 => le(1),
            2 | 3 => le(2),
            4 | 5 => le(4),
            10 | 11 => le(8),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        if self.raw.get(..4)? != 8u32.to_le_bytes() {
            return None;
        }
        let len = u64::from_le_bytes(self.raw.get(4..12)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.raw.get(12..12 + len)?).ok()
    }
}

/// A tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost first (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset in the data section (filled in by the writer).
    pub offset: u64,
}

impl TensorInfo {
    /// A tensor entry (offset assigned when written).
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ty: GgmlType) -> Self {
        Self {
            name: name.into(),
            dims,
            ty,
            offset: 0,
        }
    }

    /// Number of values.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Number of rows (`elements / dims[0]`).
    pub fn rows(&self) -> u64 {
        self.elements() / self.dims.first().copied().unwrap_or(1).max(1)
    }

    /// Bytes of the data.
    pub fn bytes(&self) -> u64 {
        self.rows() * self.ty.row_bytes(self.dims.first().copied().unwrap_or(1))
    }

    /// ggml's `n_dims`: dimensions up to the last one that is not 1.
    pub fn n_dims(&self) -> usize {
        self.dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Format version.
    pub version: u32,
    /// Metadata in file order.
    pub kvs: Vec<Kv>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment.
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

impl GgufHeader {
    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Kv> {
        self.kvs.iter().find(|k| k.key == key)
    }

    /// `general.architecture`.
    pub fn arch(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Kv::as_str)
    }

    /// Reads the header of the file at `path`.
    pub fn read_file(path: &Path) -> Result<Self, GgufError> {
        let mut r = CountingReader {
            inner: BufReader::new(File::open(path)?),
            pos: 0,
        };
        Self::read(&mut r)
    }

    fn read<R: Read>(r: &mut CountingReader<R>) -> Result<Self, GgufError> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        if &magic != b"GGUF" {
            return Err(GgufError::Invalid("bad magic".into()));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Invalid(format!("unsupported version {version}")));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        let mut kvs = Vec::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let mut raw = Vec::new();
            let ty = r.u32()?;
            raw.extend_from_slice(&ty.to_le_bytes());
            r.value(ty, &mut raw, 0)?;
            kvs.push(Kv { key, raw });
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n = r.u32()?;
            let dims = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let id = r.u32()?;
            let ty = GgmlType::from_id(id)
                .ok_or_else(|| GgufError::Invalid(format!("{name}: unknown tensor type {id}")))?;
            let offset = r.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let alignment = kvs
            .iter()
            .find(|k| k.key == "general.alignment")
            .and_then(Kv::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT);
        Ok(Self {
            version,
            kvs,
            tensors,
            alignment,
            data_offset: r.pos.next_multiple_of(alignment),
        })
    }

    /// Reads the data of tensor `t` from `file`.
    pub fn read_tensor(&self, file: &mut File, t: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        file.seek(SeekFrom::Start(self.data_offset + t.offset))?;
        let mut buf = vec![0u8; t.bytes() as usize];
        file.read_exact(&mut buf)?;
        Ok(buf)
    }
}

struct CountingReader<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> CountingReader<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, GgufError> {
        if n > 1 << 32 {
            return Err(GgufError::Invalid(format!("implausible length {n}")));
        }
        let mut b = vec![0u8; n as usize];
        self.read_exact(&mut b)?;
        Ok(b)
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()?;
        String::from_utf8(self.bytes(n)?).map_err(|e| GgufError::Invalid(e.to_string()))
    }
    /// Appends the encoded value of type `ty` to `raw`.
    fn value(&mut self, ty: u32, raw: &mut Vec<u8>, depth: u32) -> Result<(), GgufError> {
        let fixed = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => 0,
        };
        if fixed > 0 {
            raw.extend_from_slice(&self.bytes(fixed)?);
            return Ok(());
        }
        match ty {
            8 => {
                let n = self.u64()?;
                raw.extend_from_slice(&n.to_le_bytes());
                raw.extend_from_slice(&self.bytes(n)?);
            }
            9 if depth < 4 => {
                let item = self.u32()?;
                let n = self.u64()?;
                raw.extend_from_slice(&item.to_le_bytes());
                raw.extend_from_slice(&n.to_le_bytes());
                for _ in 0..n {
                    self.value(item, raw, depth + 1)?;
                }
            }
            _ => return Err(GgufError::Invalid(format!("unknown value type {ty}"))),
        }
        Ok(())
    }
}

/// Writes the header (metadata, tensor infos with offsets assigned in order, padding); the
/// caller then writes each tensor's data with [`write_tensor_data`] in the same order.
pub fn write_header(
    w: &mut impl Write,
    kvs: &[Kv],
    tensors: &mut [TensorInfo],
    alignment: u64,
) -> io::Result<u64> {
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for kv in kvs {
        enc_str(&mut head, &kv.key);
        head.extend_from_slice(&kv.raw);
    }
    let mut offset = 0u64;
    for t in tensors.iter_mut() {
        t.offset = offset;
        offset += t.bytes().next_multiple_of(alignment);
        enc_str(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&t.offset.to_le_bytes());
    }
    let padded = (head.len() as u64).next_multiple_of(alignment);
    head.resize(padded as usize, 0);
    w.write_all(&head)?;
    Ok(padded + offset)
}

/// Writes one tensor's data followed by the zero padding to `alignment`.
pub fn write_tensor_data(w: &mut impl Write, data: &[u8], alignment: u64) -> io::Result<()> {
    w.write_all(data)?;
    let pad = (data.len() as u64).next_multiple_of(alignment) - data.len() as u64;
    w.write_all(&vec![0u8; pad as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let kvs = vec![
            Kv::str("general.architecture", "llama"),
            Kv::u32("llama.block_count", 2),
            Kv::str_array("tokenizer.ggml.tokens", &["a", "bc"]),
            Kv::i32_array("tokenizer.ggml.token_type", &[1, 3]),
            Kv::bool("x.flag", true),
            Kv::f32("x.eps", 1e-5),
        ];
        let mut tensors = vec![
            TensorInfo::new("a.weight", vec![32, 2], GgmlType::F16),
            TensorInfo::new("b.weight", vec![256, 1], GgmlType::Q4_K),
        ];
        let mut out = Vec::new();
        let total = write_header(&mut out, &kvs, &mut tensors, 32).unwrap();
        write_tensor_data(&mut out, &[1u8; 128], 32).unwrap();
        write_tensor_data(&mut out, &[2u8; 144], 32).unwrap();
        assert_eq!(out.len() as u64, total);
        let mut r = CountingReader {
            inner: &out[..],
            pos: 0,
        };
        let h = GgufHeader::read(&mut r).unwrap();
        assert_eq!(h.kvs, kvs);
        assert_eq!(h.tensors, tensors);
        assert_eq!(h.arch(), Some("llama"));
        assert_eq!(h.get("llama.block_count").and_then(Kv::as_u64), Some(2));
        assert_eq!(h.data_offset % 32, 0);
        assert_eq!(out[(h.data_offset + tensors[1].offset) as usize], 2);
        assert_eq!(tensors[1].offset, 128);
        assert_eq!(tensors[1].n_dims(), 1);
    }
}
