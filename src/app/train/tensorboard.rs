//! TensorBoard event files: what `metrics.jsonl` logs, as scalars a
//! TensorBoard (or anything that reads its event files) plots.
//!
//! The format is TensorFlow's record file of `Event` protocol buffers:
//! each record is its length (u64, little-endian), the masked CRC-32C of
//! those 8 bytes, the data, and the masked CRC-32C of the data. The first
//! event names the file version; each later one holds a step, a wall time
//! and a `Summary` of `(tag, simple_value)` pairs. Only the few fields
//! written here are encoded, by hand: no protobuf dependency for three
//! messages.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::app::error::Result;

/// `crc32c` as TFRecord stores it: rotated right by 15 bits plus a constant,
/// so that a CRC of data holding CRCs stays informative.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`.
fn event(wall_time: f64, step: i64, body: (u32, &[u8])) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(1 << 3 | 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(2 << 3);
    varint(step as u64, &mut e);
    bytes_field(body.0, body.1, &mut e);
    e
}

/// `Summary { repeated Value value = 1 }`, `Value { tag = 1, simple_value = 2 (float) }`.
fn summary(scalars: &[(String, f32)]) -> Vec<u8> {
    let mut s = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut v);
        v.push(2 << 3 | 5);
        v.extend_from_slice(&value.to_le_bytes());
        bytes_field(1, &v, &mut s);
    }
    s
}

/// One record: length, its CRC, data, the data's CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// An event file in a run's `tensorboard/` folder, appended record by record.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
}

impl EventWriter {
    /// Starts `DIR/events.out.tfevents.SECONDS.gradcache`, after removing
    /// the folder's earlier event files (a resumed run writes its kept
    /// entries again, as `metrics.jsonl` is rewritten to them).
    ///
    /// # Errors
    /// [`crate::GradCacheError::Io`] naming the folder or file.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        let io = crate::error::io_error;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("events.out.tfevents.")) {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        let wall = now();
        let path = dir.join(format!("events.out.tfevents.{}.gradcache", wall as u64));
        std::fs::write(&path, record(&event(wall, 0, (3, b"brain.Event:2")))).map_err(io(&path))?;
        Ok(EventWriter { path })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event of `scalars` at `step` (nothing for none).
    ///
    /// # Errors
    /// [`crate::GradCacheError::Io`].
    pub fn scalars(&self, step: i64, scalars: &[(String, f32)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let data = record(&event(now(), step, (5, &summary(scalars))));
        let io = crate::error::io_error(&self.path);
        let mut file = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(crate::error::io_error(&self.path))?;
        file.write_all(&data).and_then(|()| file.flush()).map_err(io).map_err(Into::into)
    }
}

/// The scalars of one `metrics.jsonl` entry, tagged by where they sit:
/// `train/loss`, `train/lr`, `train/grad_norm`, `train/seconds`,
/// `pass_seconds/encoder`, `gflop_s/head`, `eval/reranked.mrr10`, … (every
/// number of the entry but its step, nested objects joined by `/`; top-level
/// numbers under `train/`).
pub fn entry_scalars(entry: &serde_json::Value) -> Vec<(String, f32)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f32)>) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push((prefix.to_string(), x as f32));
                }
            }
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(&format!("{prefix}/{k}"), v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let serde_json::Value::Object(m) = entry {
        for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "step" && k.as_str() != "plan") {
            match v {
                serde_json::Value::Object(_) => walk(k, v, &mut out),
                _ => walk(&format!("train/{k}"), v, &mut out),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFRecord's masked CRC of known data (the CRC-32C check value of
    /// "123456789" is 0xe3069283, RFC 3720 B.4), and protobuf varints.
    #[test]
    fn the_checksum_and_varints_are_the_formats() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
    }

    #[test]
    fn entries_flatten_into_tags() {
        let e = serde_json::json!({"step": 3, "loss": 1.5, "pass_seconds": {"head": 0.25}, "plan": {"chunks": 4}, "eval": {"reranked.mrr10": 0.5}});
        let mut got = entry_scalars(&e);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![("eval/reranked.mrr10".to_string(), 0.5), ("pass_seconds/head".to_string(), 0.25), ("train/loss".to_string(), 1.5)]
        );
    }
}
