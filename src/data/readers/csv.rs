//! CSV with a header line. The user names the label column, numeric columns (the number is the
//! feature value, id `hash(column)`) and categorical columns (id `hash(column, value)`, value 1);
//! when no categorical column is named, every other column not ignored is categorical. Empty
//! fields are skipped. Fields may be double-quoted ("" inside quotes is a quote).

use super::{show, LineParser, Parsed, ReaderSpec};
use crate::data::hashing::{field_key, field_value_key, slot};
use crate::error::Result;
use crate::invalid;

pub struct CsvParser {
    bits: u32,
    delimiter: u8,
    n_columns: usize,
    label: usize,
    numeric: Vec<(usize, u64, String)>,
    categorical: Vec<(usize, Vec<u8>)>,
    collect_keys: bool,
}

/// Splits a CSV line into fields (quotes removed) into `out`.
fn split<'a>(line: &'a [u8], delimiter: u8, out: &mut Vec<std::borrow::Cow<'a, [u8]>>) {
    out.clear();
    let mut rest = line;
    loop {
        if rest.first() == Some(&b'"') {
            let mut value = Vec::new();
            let mut i = 1;
            while i < rest.len() {
                if rest[i] == b'"' {
                    if rest.get(i + 1) == Some(&b'"') {
                        value.push(b'"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                value.push(rest[i]);
                i += 1;
            }
            out.push(std::borrow::Cow::Owned(value));
            rest = &rest[i.min(rest.len())..];
            match memchr::memchr(delimiter, rest) {
                Some(p) => rest = &rest[p + 1..],
                None => return,
            }
        } else {
            match memchr::memchr(delimiter, rest) {
                Some(p) => {
                    out.push(std::borrow::Cow::Borrowed(&rest[..p]));
                    rest = &rest[p + 1..];
                }
                None => {
                    out.push(std::borrow::Cow::Borrowed(rest));
                    return;
                }
            }
        }
    }
}

impl CsvParser {
    pub fn new(spec: &ReaderSpec, header: &[u8], collect_keys: bool) -> Result<Self> {
        let delimiter = match spec.delimiter.as_deref() {
            None => b',',
            Some("\\t") | Some("\t") => b'\t',
            Some(d) if d.len() == 1 => d.as_bytes()[0],
            Some(d) => return Err(invalid!("the CSV delimiter must be one character, got '{d}'")),
        };
        let header = header.strip_suffix(b"\r").unwrap_or(header);
        let mut fields = Vec::new();
        split(header, delimiter, &mut fields);
        let names: Vec<String> = fields.iter().map(|f| String::from_utf8_lossy(f).trim().to_string()).collect();
        let find = |name: &str| {
            names.iter().position(|n| n == name).ok_or_else(|| {
                invalid!("column '{name}' is not in the CSV header (columns: {})", names.join(", "))
            })
        };
        let label = match &spec.label {
            Some(l) => find(l)?,
            None => find("label").or_else(|_| find("click")).map_err(|_| {
                invalid!("name the label column (label=...): the header has no 'label' or 'click' column")
            })?,
        };
        let mut taken = vec![false; names.len()];
        taken[label] = true;
        for name in &spec.ignore {
            taken[find(name)?] = true;
        }
        let mut numeric = Vec::new();
        for name in &spec.numeric {
            let i = find(name)?;
            taken[i] = true;
            numeric.push((i, field_key(name.as_bytes()), name.clone()));
        }
        let categorical: Vec<(usize, Vec<u8>)> = if spec.categorical.is_empty() {
            (0..names.len()).filter(|&i| !taken[i]).map(|i| (i, names[i].as_bytes().to_vec())).collect()
        } else {
            spec.categorical.iter().map(|n| Ok((find(n)?, n.as_bytes().to_vec()))).collect::<Result<_>>()?
        };
        Ok(Self { bits: spec.bits()?, delimiter, n_columns: names.len(), label, numeric, categorical, collect_keys })
    }
}

impl LineParser for CsvParser {
    fn collects_keys(&self) -> bool {
        self.collect_keys
    }

    fn parse_line(&self, line: &[u8], line_no: usize, out: &mut Parsed, scratch: &mut Vec<u8>) -> Result<()> {
        if line.is_empty() {
            return Ok(());
        }
        let mut fields = Vec::with_capacity(self.n_columns);
        split(line, self.delimiter, &mut fields);
        if fields.len() != self.n_columns {
            return Err(invalid!("line {line_no}: {} fields, but the header has {}", fields.len(), self.n_columns));
        }
        let label_field = &fields[self.label];
        let label = super::parse_f32(label_field.trim_ascii())
            .ok_or_else(|| invalid!("line {line_no}: label '{}' is not a number", show(label_field)))?;
        for (i, key, name) in &self.numeric {
            let f = fields[*i].trim_ascii();
            if f.is_empty() {
                continue;
            }
            let v = super::parse_f32(f)
                .ok_or_else(|| invalid!("line {line_no}, column '{name}': '{}' is not a finite number", show(f)))?;
            out.note_key(*key);
            out.push_feature(slot(*key, self.bits), v);
        }
        for (i, name) in &self.categorical {
            let f = &fields[*i];
            if f.is_empty() {
                continue;
            }
            let key = field_value_key(name, f, scratch);
            out.note_key(key);
            out.push_feature(slot(key, self.bits), 1.0);
        }
        out.end_row(label, 1.0);
        Ok(())
    }
}
