//! Criteo display-advertising TSV: `label \t I1..I13 \t C1..C26`, empty fields allowed.
//! Integer field k becomes the feature `hash("I{k}")` with the integer as its value;
//! categorical field k with value v becomes `hash("C{k}", v)` with value 1 (see `hashing`).

use super::{parse_i64, show, LineParser, Parsed};
use crate::data::hashing::{field_key, field_value_key, slot};
use crate::error::Result;
use crate::invalid;

pub const N_INT: usize = 13;
pub const N_CAT: usize = 26;

pub struct CriteoParser {
    pub bits: u32,
    pub collect_keys: bool,
}

fn int_keys() -> &'static [u64; N_INT] {
    static KEYS: std::sync::OnceLock<[u64; N_INT]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| std::array::from_fn(|k| field_key(format!("I{}", k + 1).as_bytes())))
}

const CAT_NAMES: [&str; N_CAT] = [
    "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "C10", "C11", "C12", "C13", "C14", "C15", "C16", "C17",
    "C18", "C19", "C20", "C21", "C22", "C23", "C24", "C25", "C26",
];

impl LineParser for CriteoParser {
    fn collects_keys(&self) -> bool {
        self.collect_keys
    }

    fn parse_line(&self, line: &[u8], line_no: usize, out: &mut Parsed, scratch: &mut Vec<u8>) -> Result<()> {
        if line.is_empty() {
            return Ok(());
        }
        let mut fields = line.split(|&b| b == b'\t');
        let label_field = fields.next().unwrap_or_default();
        let label = super::parse_f32(label_field)
            .ok_or_else(|| invalid!("line {line_no}: label '{}' is not a number", show(label_field)))?;
        let mut n_fields = 1;
        for (k, field) in fields.enumerate() {
            n_fields += 1;
            if field.is_empty() || k >= N_INT + N_CAT {
                continue;
            }
            if k < N_INT {
                let v = parse_i64(field).ok_or_else(|| {
                    invalid!("line {line_no}, field I{}: '{}' is not an integer", k + 1, show(field))
                })?;
                let key = int_keys()[k];
                out.note_key(key);
                out.push_feature(slot(key, self.bits), v as f32);
            } else {
                let key = field_value_key(CAT_NAMES[k - N_INT].as_bytes(), field, scratch);
                out.note_key(key);
                out.push_feature(slot(key, self.bits), 1.0);
            }
        }
        if n_fields != 1 + N_INT + N_CAT {
            return Err(invalid!(
                "line {line_no}: expected {} tab-separated fields (label, I1..I13, C1..C26), found {n_fields}",
                1 + N_INT + N_CAT
            ));
        }
        out.end_row(label, 1.0);
        Ok(())
    }
}
