//! A binary copy of parsed rows (like Vowpal Wabbit's `-c`), written during the first pass over
//! the source files so that later epochs skip parsing.
//!
//! Layout: `SLCACHE1`, u64 length + JSON key (reader settings, n_features and each source file's
//! path, size and modification time), then chunks `[u64 rows, u64 nnz, u8 has_weights, indptr
//! i64 x (rows+1), indices i64 x nnz, values f32 x nnz, labels f32 x rows, weights f32 x rows?,
//! u64 checksum]`, then `u64::MAX` and the chunk count. A cache whose key differs (the files
//! changed) or that is incomplete or fails a checksum is not used and is written anew.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::source::Chunk;
use crate::data::csr::OwnedCsr;
use crate::error::{Error, Result};
use crate::checkpoint::checksum;

const MAGIC: &[u8; 8] = b"SLCACHE1";
const END: u64 = u64::MAX;

/// The identity of what a cache holds.
pub fn cache_key(paths: &[PathBuf], settings: &str) -> Result<String> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::Io(format!("cannot read {}: {e}", p.display())))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        files.push(serde_json::json!({"path": abs.display().to_string(), "size": meta.len(), "mtime_ns": mtime.to_string()}));
    }
    Ok(serde_json::json!({"settings": settings, "files": files}).to_string())
}

pub struct CacheWriter {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    chunks: u64,
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("cache {}: {e}", path.display()))
}

impl CacheWriter {
    pub fn create(path: &Path, key: &str) -> Result<Self> {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(|e| io(&tmp, e))?;
        out.write_all(&(key.len() as u64).to_le_bytes()).map_err(|e| io(&tmp, e))?;
        out.write_all(key.as_bytes()).map_err(|e| io(&tmp, e))?;
        Ok(Self { tmp, path: path.to_path_buf(), out, chunks: 0 })
    }

    pub fn write(&mut self, chunk: &Chunk) -> Result<()> {
        let mut bytes = Vec::with_capacity(17 + chunk.matrix.indices.len() * 12 + chunk.labels.len() * 16);
        let rows = chunk.labels.len() as u64;
        bytes.extend_from_slice(&rows.to_le_bytes());
        bytes.extend_from_slice(&(chunk.matrix.indices.len() as u64).to_le_bytes());
        bytes.push(chunk.weights.is_some() as u8);
        chunk.matrix.indptr.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        chunk.matrix.indices.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        chunk.matrix.values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        chunk.labels.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        if let Some(w) = &chunk.weights {
            w.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        }
        let sum = checksum(0, &bytes);
        self.out.write_all(&bytes).map_err(|e| io(&self.tmp, e))?;
        self.out.write_all(&sum.to_le_bytes()).map_err(|e| io(&self.tmp, e))?;
        self.chunks += 1;
        Ok(())
    }

    /// Completes the cache and moves it under its name.
    pub fn finish(mut self) -> Result<()> {
        self.out.write_all(&END.to_le_bytes()).map_err(|e| io(&self.tmp, e))?;
        self.out.write_all(&self.chunks.to_le_bytes()).map_err(|e| io(&self.tmp, e))?;
        let file = self.out.into_inner().map_err(|e| io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io(&self.path, e))
    }

    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

pub struct CacheReader {
    input: BufReader<std::fs::File>,
    n_features: usize,
    path: PathBuf,
    done: bool,
}

fn read_exact(input: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

impl CacheReader {
    /// Opens a cache if it exists, matches `key` and, with `verify`, is complete and intact
    /// (every checksum checked, reading the file once); otherwise None.
    pub fn open(path: &Path, key: &str, n_features: usize, verify: bool) -> Option<Self> {
        if verify && !Self::open_unchecked(path, key, n_features).ok()?.all(|c| c.is_ok()) {
            return None;
        }
        Self::open_unchecked(path, key, n_features).ok()
    }

    fn open_unchecked(path: &Path, key: &str, n_features: usize) -> std::io::Result<Self> {
        let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let magic = read_exact(&mut input, 8)?;
        let key_len = u64::from_le_bytes(read_exact(&mut input, 8)?.try_into().unwrap());
        if magic != MAGIC || key_len != key.len() as u64 || read_exact(&mut input, key.len())? != key.as_bytes() {
            return Err(std::io::Error::other("stale cache"));
        }
        Ok(Self { input, n_features, path: path.to_path_buf(), done: false })
    }

    fn read_chunk(&mut self) -> std::io::Result<Option<Chunk>> {
        let head = read_exact(&mut self.input, 8)?;
        let rows = u64_at(&head, 0);
        if rows == END {
            return Ok(None);
        }
        let rest = read_exact(&mut self.input, 9)?;
        let nnz = u64_at(&rest, 0) as usize;
        let has_weights = rest[8] == 1;
        let rows = rows as usize;
        let body_len = (rows + 1) * 8 + nnz * 12 + rows * 4 * (1 + has_weights as usize);
        if rows > 1 << 40 || nnz > 1 << 44 {
            return Err(std::io::Error::other("corrupt chunk header"));
        }
        let body = read_exact(&mut self.input, body_len)?;
        let stored = u64::from_le_bytes(read_exact(&mut self.input, 8)?.try_into().unwrap());
        let mut written = head;
        written.extend_from_slice(&rest);
        written.extend_from_slice(&body);
        if checksum(0, &written) != stored {
            return Err(std::io::Error::other("checksum mismatch"));
        }
        let i64s = |b: &[u8]| b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let f32s = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let mut at = 0;
        let indptr = i64s(&body[at..at + (rows + 1) * 8]);
        at += (rows + 1) * 8;
        let indices = i64s(&body[at..at + nnz * 8]);
        at += nnz * 8;
        let values = f32s(&body[at..at + nnz * 4]);
        at += nnz * 4;
        let labels = f32s(&body[at..at + rows * 4]);
        at += rows * 4;
        let weights = has_weights.then(|| f32s(&body[at..at + rows * 4]));
        Ok(Some(Chunk { matrix: OwnedCsr { indptr, indices, values, n_features: self.n_features }, labels, weights, keys: None }))
    }
}

impl Iterator for CacheReader {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        if self.done {
            return None;
        }
        match self.read_chunk() {
            Ok(Some(c)) => Some(Ok(c)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(Error::Io(format!("cache {} is corrupt: {e}", self.path.display()))))
            }
        }
    }
}
