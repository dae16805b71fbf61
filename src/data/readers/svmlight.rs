//! svmlight / libsvm: `label [qid:N] id:value ... [# comment]`.

use super::{parse_i64, show, LineParser, Parsed};
use crate::error::Result;
use crate::invalid;

pub struct SvmlightParser {
    /// Subtracted from every id: 1 for one-based files, 0 for zero-based (or for a first pass
    /// that only records the raw ids).
    pub shift: i64,
    /// When known, ids (after the shift) must be below it.
    pub n_features: Option<usize>,
}

impl LineParser for SvmlightParser {
    fn parse_line(&self, line: &[u8], line_no: usize, out: &mut Parsed, _scratch: &mut Vec<u8>) -> Result<()> {
        let line = match memchr::memchr(b'#', line) {
            Some(p) => &line[..p],
            None => line,
        };
        let mut tokens = line.split(|&b| b == b' ' || b == b'\t').filter(|t| !t.is_empty());
        let Some(label_token) = tokens.next() else { return Ok(()) };
        let label = super::parse_f32(label_token)
            .ok_or_else(|| invalid!("line {line_no}: label '{}' is not a finite number", show(label_token)))?;
        for token in tokens {
            let colon = memchr::memchr(b':', token)
                .ok_or_else(|| invalid!("line {line_no}: token '{}' is not of the form id:value", show(token)))?;
            let (key, value) = (&token[..colon], &token[colon + 1..]);
            if key == b"qid" {
                continue;
            }
            let raw = parse_i64(key).ok_or_else(|| {
                invalid!("line {line_no}: feature id '{}' in '{}' is not an integer", show(key), show(token))
            })?;
            if raw < 0 {
                return Err(invalid!("line {line_no}: feature id {raw} is negative"));
            }
            let v = super::parse_f32(value)
                .ok_or_else(|| invalid!("line {line_no}: value '{}' of feature {raw} is not a finite number", show(value)))?;
            let id = raw - self.shift;
            if id < 0 {
                return Err(invalid!(
                    "line {line_no}: feature id 0 found in a file read as one-based (use zero_based=True)"
                ));
            }
            if let Some(n) = self.n_features {
                if id as u64 >= n as u64 {
                    let base = if self.shift == 1 { "one-based" } else { "zero-based" };
                    return Err(invalid!("line {line_no}: feature id {raw} ({base}) does not fit n_features={n}"));
                }
            }
            out.note_raw_id_pub(raw, line_no);
            out.push_feature(id, v);
        }
        out.end_row(label, 1.0);
        Ok(())
    }
}
