//! Files as a stream of parsed chunks in bounded memory: text is read in blocks (gzip is
//! detected by its magic bytes and decompressed on the fly), each block is cut at its last
//! newline and parsed in parallel, and rows are handed out in chunks of about `window` rows.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{in_file, make_parser, parse_block, KeySet, LineParser, Parsed, ReaderSpec};
use crate::data::csr::OwnedCsr;
use crate::error::{Error, Result};
use crate::invalid;

/// Lines longer than this are refused (a binary file has no newlines to cut at).
pub const MAX_LINE: usize = 64 << 20;
const BLOCK: usize = 8 << 20;

/// Parsed rows ready to train on.
pub struct Chunk {
    pub matrix: OwnedCsr,
    pub labels: Vec<f32>,
    /// None when every weight is 1.
    pub weights: Option<Vec<f32>>,
    pub keys: Option<KeySet>,
}

/// A text file read block by block.
pub struct TextBlocks {
    path: PathBuf,
    reader: Box<dyn Read + Send>,
    carry: Vec<u8>,
    next_line: usize,
    eof: bool,
}

impl TextBlocks {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        let mut magic = [0u8; 2];
        let n = file.read(&mut magic).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        let head = std::io::Cursor::new(magic[..n].to_vec());
        let raw: Box<dyn Read + Send> = Box::new(head.chain(file));
        let reader: Box<dyn Read + Send> = if n == 2 && magic == [0x1f, 0x8b] {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 20, raw)))
        } else {
            raw
        };
        Ok(Self { path: path.to_path_buf(), reader, carry: Vec::new(), next_line: 1, eof: false })
    }

    fn fill(&mut self, buf: &mut Vec<u8>, want: usize) -> Result<()> {
        while buf.len() < want && !self.eof {
            let start = buf.len();
            buf.resize(start + (1 << 20), 0);
            let n = loop {
                match self.reader.read(&mut buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(Error::Io(format!(
                            "{}: cannot read past line {} ({e}; a truncated or corrupt gzip file?)",
                            self.path.display(),
                            self.next_line
                        )))
                    }
                }
            };
            buf.truncate(start + n);
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// The next block of whole lines (at least `target` bytes unless the file ends) and the
    /// number of its first line.
    pub fn next_block(&mut self, target: usize) -> Result<Option<(Vec<u8>, usize)>> {
        let mut buf = std::mem::take(&mut self.carry);
        let mut want = target.max(1);
        loop {
            self.fill(&mut buf, want)?;
            if self.eof {
                break;
            }
            if let Some(p) = memchr::memrchr(b'\n', &buf) {
                self.carry = buf.split_off(p + 1);
                break;
            }
            if buf.len() > MAX_LINE {
                return Err(invalid!(
                    "{}: line {} is longer than {} MiB: is this a text file of the right format?",
                    self.path.display(),
                    self.next_line,
                    MAX_LINE >> 20
                ));
            }
            want = buf.len() + BLOCK;
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let first = self.next_line;
        self.next_line += memchr::memchr_iter(b'\n', &buf).count();
        Ok(Some((buf, first)))
    }

    /// The first line (a CSV header), consumed.
    pub fn header(&mut self) -> Result<Vec<u8>> {
        let mut buf = std::mem::take(&mut self.carry);
        loop {
            if let Some(p) = memchr::memchr(b'\n', &buf) {
                self.carry = buf.split_off(p + 1);
                buf.truncate(p);
                self.next_line += 1;
                return Ok(buf);
            }
            if self.eof {
                self.next_line += 1;
                return Ok(buf);
            }
            let want = buf.len() + (1 << 16);
            self.fill(&mut buf, want)?;
            if buf.len() > MAX_LINE {
                return Err(invalid!("{}: the header line is longer than {} MiB", self.path.display(), MAX_LINE >> 20));
            }
        }
    }
}

/// How the rows of a file map to features, resolved before streaming: for svmlight the id base
/// and n_features (from the user or a first pass), for the others the hash width.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub spec: ReaderSpec,
    pub n_features: usize,
    pub shift: i64,
    /// Labels must be -1/0/1 and become 0/1 (label > 0).
    pub binary: bool,
}

/// Parses whole files into memory (in parallel), for test sets and small data.
pub fn read_all(paths: &[PathBuf], resolved: &Resolved, collect_keys: bool) -> Result<Chunk> {
    let mut all = Parsed::default();
    for path in paths {
        let mut blocks = TextBlocks::open(path)?;
        let header = if resolved.spec.format == "csv" { Some(blocks.header()?) } else { None };
        let parser = make_parser(&resolved.spec, header.as_deref(), resolved.shift, collect_keys, resolved.binary)
            .map_err(|e| in_file(path, e))?;
        while let Some((text, first)) = blocks.next_block(64 << 20)? {
            all.append(parse_block(parser.as_ref(), &text, first).map_err(|e| in_file(path, e))?);
        }
    }
    Ok(finish(all, resolved.n_features))
}

fn finish(mut parsed: Parsed, n_features: usize) -> Chunk {
    let keys = parsed.keys.take();
    let (matrix, labels, weights) = parsed.into_csr(n_features);
    let weights = if weights.iter().all(|&w| w == 1.0) { None } else { Some(weights) };
    Chunk { matrix, labels, weights, keys }
}

/// The first `max_rows` rows of the files (a calibration sample), reading only as much of the
/// files as that needs.
pub fn read_head(paths: &[PathBuf], resolved: &Resolved, max_rows: usize) -> Result<Chunk> {
    let mut head = Parsed::default();
    let mut source = FileSource::new(paths.to_vec(), resolved.clone(), max_rows.max(1), false)?;
    while head.n_rows() < max_rows {
        let Some(chunk) = source.next() else { break };
        let chunk = chunk?;
        let take = chunk.labels.len().min(max_rows - head.n_rows());
        let end = chunk.matrix.indptr[take] as usize;
        head.append(Parsed {
            row_ends: chunk.matrix.indptr[1..=take].to_vec(),
            indices: chunk.matrix.indices[..end].to_vec(),
            values: chunk.matrix.values[..end].to_vec(),
            labels: chunk.labels[..take].to_vec(),
            weights: chunk.weights.map_or_else(|| vec![1.0; take], |w| w[..take].to_vec()),
            ..Default::default()
        });
    }
    Ok(finish(head, resolved.n_features))
}

/// Resolves a spec against the files: for svmlight without n_features or id base, one
/// streaming pass finds the smallest and largest id.
pub fn resolve(paths: &[PathBuf], spec: &ReaderSpec, binary: bool) -> Result<Resolved> {
    if paths.is_empty() {
        return Err(invalid!("no input files"));
    }
    if spec.is_hashed() {
        let bits = spec.bits()?;
        return Ok(Resolved { spec: spec.clone(), n_features: 1usize << bits, shift: 0, binary });
    }
    let (shift, n_features) = match (spec.zero_based, spec.n_features) {
        (Some(zero), Some(n)) => (if zero { 0 } else { 1 }, n),
        _ => {
            let raw = ReaderSpec { n_features: None, ..spec.clone() };
            let parser = make_parser(&raw, None, 0, false, false)?;
            let (mut min_id, mut max_id) = (i64::MAX, -1i64);
            for path in paths {
                let mut blocks = TextBlocks::open(path)?;
                while let Some((text, first)) = blocks.next_block(BLOCK)? {
                    let parsed = parse_block(parser.as_ref(), &text, first).map_err(|e| in_file(path, e))?;
                    min_id = min_id.min(parsed.min_id.unwrap_or(i64::MAX));
                    max_id = max_id.max(parsed.max_id.map_or(-1, |m| m.0));
                }
            }
            let shift = match spec.zero_based {
                Some(true) => 0,
                Some(false) => 1,
                None => (min_id != 0) as i64,
            };
            let needed = (max_id + 1 - shift).max(1) as usize;
            let n = spec.n_features.unwrap_or(needed);
            (shift, n)
        }
    };
    if n_features == 0 {
        return Err(invalid!("n_features must be at least 1"));
    }
    Ok(Resolved { spec: ReaderSpec { n_features: Some(n_features), ..spec.clone() }, n_features, shift, binary })
}

/// Chunks of about `window` rows from `paths`, in file order.
pub struct FileSource {
    paths: Vec<PathBuf>,
    resolved: Resolved,
    window: usize,
    collect_keys: bool,
    file: usize,
    current: Option<(TextBlocks, Box<dyn LineParser>)>,
    pending: Parsed,
    done: bool,
    /// Rows of the next chunk: starts small and doubles up to `window`, so the trainer does not
    /// wait for a whole window to be parsed before its first batch.
    next_chunk: usize,
}

const FIRST_CHUNK: usize = 4096;

impl FileSource {
    pub fn new(paths: Vec<PathBuf>, resolved: Resolved, window: usize, collect_keys: bool) -> Result<Self> {
        if window == 0 {
            return Err(invalid!("the shuffle window must be at least 1 row"));
        }
        Ok(Self {
            paths,
            resolved,
            window,
            collect_keys,
            file: 0,
            current: None,
            pending: Parsed::default(),
            done: false,
            next_chunk: window.min(FIRST_CHUNK),
        })
    }

    fn step(&mut self) -> Result<Option<Chunk>> {
        loop {
            if self.pending.n_rows() >= self.next_chunk {
                self.next_chunk = (self.next_chunk * 2).min(self.window);
                let full = std::mem::take(&mut self.pending);
                return Ok(Some(finish(full, self.resolved.n_features)));
            }
            if self.current.is_none() {
                if self.file == self.paths.len() {
                    if self.pending.n_rows() == 0 {
                        return Ok(None);
                    }
                    let rest = std::mem::take(&mut self.pending);
                    return Ok(Some(finish(rest, self.resolved.n_features)));
                }
                let path = &self.paths[self.file];
                let mut blocks = TextBlocks::open(path)?;
                let header = if self.resolved.spec.format == "csv" { Some(blocks.header()?) } else { None };
                let parser =
                    make_parser(&self.resolved.spec, header.as_deref(), self.resolved.shift, self.collect_keys, self.resolved.binary)
                        .map_err(|e| in_file(path, e))?;
                self.current = Some((blocks, parser));
            }
            let path = self.paths[self.file].clone();
            let (blocks, parser) = self.current.as_mut().unwrap();
            match blocks.next_block(BLOCK)? {
                Some((text, first)) => {
                    self.pending.append(parse_block(parser.as_ref(), &text, first).map_err(|e| in_file(&path, e))?);
                }
                None => {
                    self.current = None;
                    self.file += 1;
                }
            }
        }
    }
}

impl Iterator for FileSource {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
