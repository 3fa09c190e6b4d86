//! A minimal GGUF (v3) writer: metadata key/values and F32 tensors. Used to generate small test
//! models; reading is llama.cpp's job.

use std::io::{self, Write};

const ALIGNMENT: usize = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// `string`.
    Str(String),
    /// Array of strings.
    StrArray(Vec<String>),
    /// Array of `int32`.
    I32Array(Vec<i32>),
}

impl MetaValue {
    fn type_id(&self) -> u32 {
        match self {
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::Str(_) => 8,
            Self::StrArray(_) | Self::I32Array(_) => 9,
        }
    }
}

/// An F32 tensor; `dims` are in GGUF order (innermost first, `ne0` = row length).
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Row-major data, `product(dims)` values.
    pub data: Vec<f32>,
}

/// A GGUF file under construction.
#[derive(Debug, Default)]
pub struct GgufWriter {
    meta: Vec<(String, MetaValue)>,
    tensors: Vec<Tensor>,
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key/value.
    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.meta.push((key.to_owned(), value));
        self
    }

    /// Adds a tensor.
    pub fn tensor(&mut self, tensor: Tensor) -> &mut Self {
        self.tensors.push(tensor);
        self
    }

    /// Writes the whole file.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(b"GGUF")?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.meta.len() as u64).to_le_bytes())?;
        for (key, value) in &self.meta {
            write_str(w, key)?;
            w.write_all(&value.type_id().to_le_bytes())?;
            match value {
                MetaValue::U32(v) => w.write_all(&v.to_le_bytes())?,
                MetaValue::I32(v) => w.write_all(&v.to_le_bytes())?,
                MetaValue::F32(v) => w.write_all(&v.to_le_bytes())?,
                MetaValue::Bool(v) => w.write_all(&[u8::from(*v)])?,
                MetaValue::Str(s) => write_str(w, s)?,
                MetaValue::StrArray(items) => {
                    w.write_all(&8u32.to_le_bytes())?;
                    w.write_all(&(items.len() as u64).to_le_bytes())?;
                    for s in items {
                        write_str(w, s)?;
                    }
                }
                MetaValue::I32Array(items) => {
                    w.write_all(&5u32.to_le_bytes())?;
                    w.write_all(&(items.len() as u64).to_le_bytes())?;
                    for v in items {
                        w.write_all(&v.to_le_bytes())?;
                    }
                }
            }
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            offsets.push(offset);
            offset += (t.data.len() * 4).next_multiple_of(ALIGNMENT);
        }
        let mut header_len = 0usize;
        {
            let mut counter = CountingWriter(&mut header_len);
            for (t, off) in self.tensors.iter().zip(&offsets) {
                write_tensor_info(&mut counter, t, *off)?;
            }
        }
        for (t, off) in self.tensors.iter().zip(&offsets) {
            write_tensor_info(w, t, *off)?;
        }
        // Pad the header so the data section starts aligned. The header length so far is the
        // fixed part plus metadata plus tensor infos; compute it exactly.
        let meta_len = self.meta_len();
        let written = 4 + 4 + 8 + 8 + meta_len + header_len;
        w.write_all(&vec![0u8; written.next_multiple_of(ALIGNMENT) - written])?;
        for t in &self.tensors {
            let mut bytes = Vec::with_capacity(t.data.len() * 4);
            for v in &t.data {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            let padded = bytes.len().next_multiple_of(ALIGNMENT);
            bytes.resize(padded, 0);
            w.write_all(&bytes)?;
        }
        Ok(())
    }

    fn meta_len(&self) -> usize {
        let s = |s: &str| 8 + s.len();
        self.meta
            .iter()
            .map(|(k, v)| {
                s(k) + 4
                    + match v {
                        MetaValue::U32(_) | MetaValue::I32(_) | MetaValue::F32(_) => 4,
                        MetaValue::Bool(_) => 1,
                        MetaValue::Str(x) => s(x),
                        MetaValue::StrArray(items) => {
                            12 + items.iter().map(|x| s(x)).sum::<usize>()
                        }
                        MetaValue::I32Array(items) => 12 + 4 * items.len(),
                    }
            })
            .sum()
    }
}

fn write_tensor_info(w: &mut impl Write, t: &Tensor, offset: usize) -> io::Result<()> {
    write_str(w, &t.name)?;
    w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
    for d in &t.dims {
        w.write_all(&d.to_le_bytes())?;
    }
    w.write_all(&0u32.to_le_bytes())?; // GGML_TYPE_F32
    w.write_all(&(offset as u64).to_le_bytes())
}

struct CountingWriter<'a>(&'a mut usize);

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        *self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_sized() {
        let mut g = GgufWriter::new();
        g.meta("general.architecture", MetaValue::Str("llama".into()))
            .meta("x.list", MetaValue::StrArray(vec!["a".into(), "bc".into()]))
            .meta("x.ids", MetaValue::I32Array(vec![1, 2, 3]))
            .tensor(Tensor {
                name: "t".into(),
                dims: vec![3],
                data: vec![1.0, 2.0, 3.0],
            });
        let mut out = Vec::new();
        g.write(&mut out).unwrap();
        assert_eq!(&out[..4], b"GGUF");
        // data (12 bytes padded to 32) is the tail of the file and starts aligned
        assert_eq!(out.len() % ALIGNMENT, 0);
        let data_start = out.len() - 32;
        assert_eq!(&out[data_start..data_start + 4], &1.0f32.to_le_bytes());
    }
}
