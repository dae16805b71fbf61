//! Text readers: svmlight/libsvm, Vowpal Wabbit, Criteo TSV and CSV with named columns, into
//! CSR blocks. A block of text is split at line boundaries and parsed on all threads; errors name
//! the file, the line and the field. `source` streams files (gzip too) in bounded memory and
//! `cache` keeps a binary copy of the parsed rows for later epochs.

pub mod cache;
pub mod criteo;
pub mod csv;
pub mod source;
pub mod svmlight;
pub mod vw;

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;
use serde::Deserialize;

use super::csr::OwnedCsr;
use crate::error::{Error, Result};
use crate::invalid;

/// What the user asked for, as given from Python or the CLI.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ReaderSpec {
    /// "svmlight", "vw", "criteo" or "csv".
    pub format: String,
    /// Hashed formats (vw, criteo, csv): ids in [0, 2^bits). Default 20.
    #[serde(default)]
    pub bits: Option<u32>,
    /// svmlight: ids must be < n_features (None: found by a first pass).
    #[serde(default)]
    pub n_features: Option<usize>,
    /// svmlight: None = one-based unless some id is 0.
    #[serde(default)]
    pub zero_based: Option<bool>,
    /// csv: the label column (default "label", else "click").
    #[serde(default)]
    pub label: Option<String>,
    /// csv: columns read as numbers (feature value = the number).
    #[serde(default)]
    pub numeric: Vec<String>,
    /// csv: columns hashed as categories; empty = every column not named elsewhere.
    #[serde(default)]
    pub categorical: Vec<String>,
    /// csv: columns to skip.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// csv: field delimiter (default ",").
    #[serde(default)]
    pub delimiter: Option<String>,
}

impl ReaderSpec {
    pub fn bits(&self) -> Result<u32> {
        let bits = self.bits.unwrap_or(20);
        if !(1..=40).contains(&bits) {
            return Err(invalid!("bits must be in [1, 40], got {bits}"));
        }
        Ok(bits)
    }

    pub fn is_hashed(&self) -> bool {
        self.format != "svmlight"
    }
}

/// A set of 64-bit keys that are already hashes, so the set does not hash them again.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub type KeySet = HashSet<u64, BuildHasherDefault<IdentityHasher>>;

/// Rows parsed from some lines.
#[derive(Default, Debug)]
pub struct Parsed {
    /// Row ends (no leading 0), so blocks concatenate by offsetting.
    pub row_ends: Vec<i64>,
    pub indices: Vec<i64>,
    pub values: Vec<f32>,
    pub labels: Vec<f32>,
    pub weights: Vec<f32>,
    /// Smallest and largest raw id with the line of the largest (svmlight).
    pub min_id: Option<i64>,
    pub max_id: Option<(i64, usize)>,
    /// Distinct 64-bit keys hashed (hashed formats, when collecting collision statistics).
    pub keys: Option<KeySet>,
}

impl Parsed {
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    #[inline]
    pub fn push_feature(&mut self, id: i64, value: f32) {
        self.indices.push(id);
        self.values.push(value);
    }

    #[inline]
    pub fn end_row(&mut self, label: f32, weight: f32) {
        self.row_ends.push(self.indices.len() as i64);
        self.labels.push(label);
        self.weights.push(weight);
    }

    #[inline]
    pub fn note_key(&mut self, key: u64) {
        if let Some(keys) = &mut self.keys {
            keys.insert(key);
        }
    }

    pub fn note_raw_id_pub(&mut self, id: i64, line: usize) {
        self.min_id = Some(self.min_id.map_or(id, |m| m.min(id)));
        if self.max_id.is_none_or(|(m, _)| id > m) {
            self.max_id = Some((id, line));
        }
    }

    /// Appends `other` (the rows that follow).
    pub fn append(&mut self, mut other: Parsed) {
        let offset = self.indices.len() as i64;
        self.row_ends.extend(other.row_ends.iter().map(|e| e + offset));
        self.indices.append(&mut other.indices);
        self.values.append(&mut other.values);
        self.labels.append(&mut other.labels);
        self.weights.append(&mut other.weights);
        if let Some(m) = other.min_id {
            self.min_id = Some(self.min_id.map_or(m, |s| s.min(m)));
        }
        if let Some((m, line)) = other.max_id {
            if self.max_id.is_none_or(|(s, _)| m > s) {
                self.max_id = Some((m, line));
            }
        }
        if let Some(keys) = other.keys {
            match &mut self.keys {
                Some(mine) => mine.extend(keys),
                None => self.keys = Some(keys),
            }
        }
    }

    /// The rows as a CSR matrix over `n_features` columns, labels and weights.
    pub fn into_csr(self, n_features: usize) -> (OwnedCsr, Vec<f32>, Vec<f32>) {
        let mut indptr = Vec::with_capacity(self.row_ends.len() + 1);
        indptr.push(0);
        indptr.extend_from_slice(&self.row_ends);
        (OwnedCsr { indptr, indices: self.indices, values: self.values, n_features }, self.labels, self.weights)
    }
}

/// Parses one line into `out`. Blank lines and comments are skipped by the caller or the
/// parser. `line_no` is 1-based, for error messages.
pub trait LineParser: Send + Sync {
    fn parse_line(&self, line: &[u8], line_no: usize, out: &mut Parsed, scratch: &mut Vec<u8>) -> Result<()>;
    /// Whether distinct keys are collected for collision statistics.
    fn collects_keys(&self) -> bool {
        false
    }
}

/// Iterates the lines of `text` (without '\n' or a trailing '\r') with their 1-based numbers.
pub fn lines(text: &[u8], first_line: usize) -> impl Iterator<Item = (usize, &[u8])> {
    let mut rest = text;
    let mut line_no = first_line;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let mut line = &rest[..end];
        rest = if end < rest.len() { &rest[end + 1..] } else { &[] };
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let n = line_no;
        line_no += 1;
        Some((n, line))
    })
}

fn parse_sequential(parser: &dyn LineParser, text: &[u8], first_line: usize) -> Result<Parsed> {
    let mut out = Parsed { keys: parser.collects_keys().then(KeySet::default), ..Default::default() };
    let mut scratch = Vec::new();
    for (line_no, line) in lines(text, first_line) {
        parser.parse_line(line, line_no, &mut out, &mut scratch)?;
    }
    Ok(out)
}

/// Parses a block of whole lines in parallel on the current rayon pool: the text is cut at
/// newlines into pieces, each parsed on its own, and the results concatenated in order. The
/// first error (in line order) wins.
pub fn parse_block(parser: &dyn LineParser, text: &[u8], first_line: usize) -> Result<Parsed> {
    const MIN_PIECE: usize = 1 << 20;
    let pieces = rayon::current_num_threads().min(text.len() / MIN_PIECE).max(1) * 4;
    let pieces = if text.len() < MIN_PIECE { 1 } else { pieces };
    let mut bounds = vec![0usize];
    for k in 1..pieces {
        let target = (text.len() * k / pieces).max(*bounds.last().unwrap());
        match memchr::memchr(b'\n', &text[target..]) {
            Some(p) => bounds.push(target + p + 1),
            None => break,
        }
    }
    bounds.push(text.len());
    bounds.dedup();
    let starts: Vec<usize> = {
        let mut line = first_line;
        let mut starts = Vec::with_capacity(bounds.len());
        for w in bounds.windows(2) {
            starts.push(line);
            line += memchr::memchr_iter(b'\n', &text[w[0]..w[1]]).count();
        }
        starts
    };
    let results: Vec<Result<Parsed>> = bounds
        .windows(2)
        .zip(starts)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|(w, start)| parse_sequential(parser, &text[w[0]..w[1]], start))
        .collect();
    let mut out = Parsed::default();
    for r in results {
        out.append(r?);
    }
    if out.keys.is_none() && parser.collects_keys() {
        out.keys = Some(KeySet::default());
    }
    Ok(out)
}

/// Collision statistics of hashed ids: distinct keys seen and distinct slots they used.
pub fn collision_stats(keys: &KeySet, bits: u32) -> (usize, usize) {
    let mut slots: Vec<u64> = keys.iter().map(|&k| k & ((1u64 << bits) - 1)).collect();
    slots.sort_unstable();
    slots.dedup();
    (keys.len(), slots.len())
}

/// Checks and maps labels for a binary classifier: -1/0/1 in the file, 0/1 out (label > 0).
struct BinaryLabels(Box<dyn LineParser>);

impl LineParser for BinaryLabels {
    fn parse_line(&self, line: &[u8], line_no: usize, out: &mut Parsed, scratch: &mut Vec<u8>) -> Result<()> {
        let rows = out.labels.len();
        self.0.parse_line(line, line_no, out, scratch)?;
        if out.labels.len() > rows {
            let label = out.labels.last_mut().unwrap();
            if *label != -1.0 && *label != 0.0 && *label != 1.0 {
                return Err(invalid!(
                    "line {line_no}: label {label}: a binary classifier reading files takes labels 0/1 or -1/+1"
                ));
            }
            *label = (*label > 0.0) as u8 as f32;
        }
        Ok(())
    }

    fn collects_keys(&self) -> bool {
        self.0.collects_keys()
    }
}

/// (distinct keys, distinct slots) of what a hashed format read; None for svmlight or when no
/// keys were collected.
pub fn hashed_key_stats(keys: Option<&KeySet>, spec: &ReaderSpec) -> Result<Option<(usize, usize)>> {
    match (keys, spec.is_hashed()) {
        (Some(keys), true) => Ok(Some(collision_stats(keys, spec.bits()?))),
        _ => Ok(None),
    }
}

/// Builds the line parser for `spec`. `header` is the first line of a CSV file; `binary`
/// checks and maps labels for a classifier.
pub fn make_parser(
    spec: &ReaderSpec,
    header: Option<&[u8]>,
    svmlight_shift: i64,
    collect_keys: bool,
    binary: bool,
) -> Result<Box<dyn LineParser>> {
    let parser: Box<dyn LineParser> = match spec.format.as_str() {
        "svmlight" | "libsvm" => Box::new(svmlight::SvmlightParser { shift: svmlight_shift, n_features: spec.n_features }),
        "vw" => Box::new(vw::VwParser { bits: spec.bits()?, collect_keys }),
        "criteo" => Box::new(criteo::CriteoParser { bits: spec.bits()?, collect_keys }),
        "csv" => {
            let header = header.ok_or_else(|| invalid!("a CSV file needs a header line naming its columns"))?;
            Box::new(csv::CsvParser::new(spec, header, collect_keys)?)
        }
        other => return Err(invalid!("unknown format '{other}': use svmlight, vw, criteo or csv")),
    };
    Ok(if binary { Box::new(BinaryLabels(parser)) } else { parser })
}

/// Prefixes an error with the file it came from.
pub fn in_file(path: &std::path::Path, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("{}: {m}", path.display())),
        Error::Io(m) => Error::Io(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// Parses a finite float from a field.
#[inline]
pub fn parse_f32(field: &[u8]) -> Option<f32> {
    std::str::from_utf8(field).ok()?.parse::<f32>().ok().filter(|v| v.is_finite())
}

/// Parses a decimal integer (optional sign) from a field, fast.
#[inline]
pub fn parse_i64(field: &[u8]) -> Option<i64> {
    let (neg, digits) = match field.first() {
        Some(b'-') => (true, &field[1..]),
        Some(b'+') => (false, &field[1..]),
        _ => (false, field),
    };
    if digits.is_empty() || digits.len() > 18 {
        return std::str::from_utf8(field).ok()?.parse().ok();
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i64;
    }
    Some(if neg { -v } else { v })
}

/// A field shown in an error message (shortened, lossy UTF-8).
pub fn show(field: &[u8]) -> String {
    let s = String::from_utf8_lossy(&field[..field.len().min(40)]).into_owned();
    if field.len() > 40 {
        s + "..."
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::hashing::{field_key, field_value_key, slot};

    fn spec(format: &str) -> ReaderSpec {
        ReaderSpec { format: format.into(), bits: Some(20), ..Default::default() }
    }

    #[test]
    fn criteo_fields_and_errors() {
        let mut line = String::from("1\t5\t\t-2");
        line += &"\t".repeat(10);
        line += "\tab12cd";
        line += &"\t".repeat(25);
        let p = make_parser(&spec("criteo"), None, 0, true, true).unwrap();
        let out = parse_block(p.as_ref(), line.as_bytes(), 1).unwrap();
        assert_eq!(out.labels, vec![1.0]);
        let mut s = Vec::new();
        assert_eq!(out.indices, vec![slot(field_key(b"I1"), 20), slot(field_key(b"I3"), 20), slot(field_value_key(b"C1", b"ab12cd", &mut s), 20)]);
        assert_eq!(out.values, vec![5.0, -2.0, 1.0]);
        assert_eq!(out.keys.as_ref().unwrap().len(), 3);
        let e = parse_block(p.as_ref(), b"1\t2\t3\n0\tx", 7).unwrap_err();
        assert!(e.to_string().contains("line 7"), "{e}");
        let e = parse_block(p.as_ref(), format!("{line}\n2{}", &line[1..]).as_bytes(), 1).unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("label 2"), "{e}");
    }

    #[test]
    fn vw_namespaces_values_and_importance() {
        let p = make_parser(&spec("vw"), None, 0, false, true).unwrap();
        let out = parse_block(p.as_ref(), b"-1 2.0 'tag|user age:0.5 male |ad:2 id42\n\n1 | x\n", 1).unwrap();
        assert_eq!(out.labels, vec![0.0, 1.0]);
        assert_eq!(out.weights, vec![2.0, 1.0]);
        let mut s = Vec::new();
        let expect = |ns: &[u8], f: &[u8], s: &mut Vec<u8>| slot(field_value_key(ns, f, s), 20);
        assert_eq!(out.indices, vec![expect(b"user", b"age", &mut s), expect(b"user", b"male", &mut s), expect(b"ad", b"id42", &mut s), expect(b" ", b"x", &mut s)]);
        assert_eq!(out.values, vec![0.5, 1.0, 2.0, 1.0]);
        assert!(parse_block(p.as_ref(), b"1 no bar\n", 1).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn csv_columns_quotes_and_errors() {
        let s = ReaderSpec { numeric: vec!["price".into()], ignore: vec!["id".into()], ..spec("csv") };
        let p = make_parser(&s, Some(b"id,click,price,site\r"), 0, false, true).unwrap();
        let out = parse_block(p.as_ref(), b"7,1,2.5,\"a,b\"\n8,0,,x\r\n", 2).unwrap();
        assert_eq!(out.labels, vec![1.0, 0.0]);
        let mut sc = Vec::new();
        assert_eq!(out.indices, vec![slot(field_key(b"price"), 20), slot(field_value_key(b"site", b"a,b", &mut sc), 20), slot(field_value_key(b"site", b"x", &mut sc), 20)]);
        let e = parse_block(p.as_ref(), b"1,1,abc,x\n", 5).unwrap_err();
        assert!(e.to_string().contains("line 5, column 'price'"), "{e}");
        assert!(parse_block(p.as_ref(), b"1,1\n", 3).unwrap_err().to_string().contains("line 3"));
        assert!(make_parser(&ReaderSpec { label: Some("nope".into()), ..spec("csv") }, Some(b"a,b"), 0, false, false).is_err());
    }

    #[test]
    fn parallel_parse_equals_sequential_and_keeps_line_numbers() {
        let mut text = String::new();
        for i in 0..200_000 {
            text += &format!("{} {}:{} {}:1.5\n", i % 2, i % 97 + 1, i, i % 13 + 1);
        }
        let p = SvmlightParser { shift: 1, n_features: Some(100) };
        let par = parse_block(&p, text.as_bytes(), 1).unwrap();
        let seq = parse_sequential(&p, text.as_bytes(), 1).unwrap();
        assert_eq!(par.row_ends, seq.row_ends);
        assert_eq!(par.indices, seq.indices);
        assert_eq!(par.values, seq.values);
        text.replace_range(text.len() - 6..text.len() - 5, "x");
        let e = parse_block(&p, text.as_bytes(), 1).unwrap_err();
        assert!(e.to_string().contains("line 200000"), "{e}");
    }

    use svmlight::SvmlightParser;
}
