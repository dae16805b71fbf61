//! Vowpal Wabbit text: `label [importance] ['tag]|ns[:weight] feature[:value] ... |ns2 ...`.
//! Feature `f` of namespace `ns` becomes `hash(ns, f)` (see `hashing`) with value
//! `value * namespace weight` (value 1 when omitted); the importance becomes the sample weight.

use super::{show, LineParser, Parsed};
use crate::data::hashing::{field_value_key, slot};
use crate::error::Result;
use crate::invalid;

pub struct VwParser {
    pub bits: u32,
    pub collect_keys: bool,
}

impl LineParser for VwParser {
    fn collects_keys(&self) -> bool {
        self.collect_keys
    }

    fn parse_line(&self, line: &[u8], line_no: usize, out: &mut Parsed, scratch: &mut Vec<u8>) -> Result<()> {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(());
        }
        let bar = memchr::memchr(b'|', line)
            .ok_or_else(|| invalid!("line {line_no}: no '|' starts a namespace (VW format: label |ns features)"))?;
        let mut head = line[..bar].split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty());
        let label_field = head.next().ok_or_else(|| invalid!("line {line_no}: the example has no label"))?;
        let label = super::parse_f32(label_field)
            .ok_or_else(|| invalid!("line {line_no}: label '{}' is not a number", show(label_field)))?;
        let mut weight = 1.0;
        if let Some(t) = head.next() {
            if t[0] != b'\'' {
                weight = super::parse_f32(t)
                    .filter(|w| *w >= 0.0)
                    .ok_or_else(|| invalid!("line {line_no}: importance '{}' is not a number >= 0", show(t)))?;
            }
        }
        for segment in line[bar + 1..].split(|&b| b == b'|') {
            let mut tokens = segment.split(|b| b.is_ascii_whitespace());
            // A namespace name touches the '|'; "| f" is the default namespace " ".
            let first = tokens.next().unwrap_or_default();
            let (ns, ns_weight) = match memchr::memchr(b':', first) {
                Some(c) => {
                    let w = super::parse_f32(&first[c + 1..])
                        .ok_or_else(|| invalid!("line {line_no}: namespace weight in '{}' is not a number", show(first)))?;
                    (&first[..c], w)
                }
                None => (first, 1.0),
            };
            let ns: &[u8] = if ns.is_empty() { b" " } else { ns };
            for token in tokens.filter(|t| !t.is_empty()) {
                let (name, value) = match memchr::memrchr(b':', token) {
                    Some(c) => {
                        let v = super::parse_f32(&token[c + 1..]).ok_or_else(|| {
                            invalid!("line {line_no}: value in '{}' is not a finite number", show(token))
                        })?;
                        (&token[..c], v)
                    }
                    None => (token, 1.0),
                };
                let key = field_value_key(ns, name, scratch);
                out.note_key(key);
                out.push_feature(slot(key, self.bits), value * ns_weight);
            }
        }
        out.end_row(label, weight);
        Ok(())
    }
}
