//! Feature hashing, stable across versions, platforms and processes.
//!
//! The hash is MurmurHash3 x64_128 (Appleby), seed 0, keeping the low 64 bits of the 128-bit
//! result (bytes read little-endian, as the reference implementation on x86). Ids:
//! - a categorical value `v` of field `f`: `murmur3(f ++ 0x00 ++ v) mod 2^bits`, so equal values
//!   in different fields land in different slots;
//! - a numeric field `f` (value kept as the feature value): `murmur3(f ++ 0x00) mod 2^bits`;
//! - a 64-bit integer key `k` (DataRecord style): `murmur3(k as 8 little-endian bytes) mod 2^bits`.
//!
//! These formulas are part of the file and model format: changing them changes every id.

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// MurmurHash3_x64_128 of `data` with `seed`: (low, high) 64-bit halves.
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let len = data.len();
    let mut h1 = seed as u64;
    let mut h2 = seed as u64;
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let mut k1 = u64::from_le_bytes(block[..8].try_into().unwrap());
        let mut k2 = u64::from_le_bytes(block[8..].try_into().unwrap());
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1.rotate_left(27).wrapping_add(h2).wrapping_mul(5).wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2.rotate_left(31).wrapping_add(h1).wrapping_mul(5).wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let mut k1 = 0u64;
    let mut k2 = 0u64;
    for (i, &b) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= (b as u64) << (8 * i);
        } else {
            k2 |= (b as u64) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
    }
    if !tail.is_empty() {
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
    }
    h1 ^= len as u64;
    h2 ^= len as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

/// The 64-bit key of a categorical value of a field (before reduction to `bits`).
pub fn field_value_key(field: &[u8], value: &[u8], scratch: &mut Vec<u8>) -> u64 {
    scratch.clear();
    scratch.extend_from_slice(field);
    scratch.push(0);
    scratch.extend_from_slice(value);
    murmur3_x64_128(scratch, 0).0
}

/// The 64-bit key of a numeric field.
pub fn field_key(field: &[u8]) -> u64 {
    let mut buf = Vec::with_capacity(field.len() + 1);
    buf.extend_from_slice(field);
    buf.push(0);
    murmur3_x64_128(&buf, 0).0
}

/// The 64-bit key of an integer feature key.
pub fn integer_key(key: u64) -> u64 {
    murmur3_x64_128(&key.to_le_bytes(), 0).0
}

/// Reduces a 64-bit key into `[0, 2^bits)`.
#[inline]
pub fn slot(key: u64, bits: u32) -> i64 {
    (key & ((1u64 << bits) - 1)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_murmur3() {
        // Values from the reference implementation (Python `mmh3.hash128(data, 0, True)`).
        assert_eq!(murmur3_x64_128(b"hello", 0).0, 0xcbd8a7b341bd9b02);
        assert_eq!(murmur3_x64_128(b"", 0), (0, 0));
        let full = murmur3_x64_128(b"hello", 0);
        assert_eq!((full.1 as u128) << 64 | full.0 as u128, 121118445609844952839898260755277781762u128);
    }

    #[test]
    fn fields_separate_equal_values() {
        let mut s = Vec::new();
        assert_ne!(field_value_key(b"C1", b"abc", &mut s), field_value_key(b"C2", b"abc", &mut s));
        assert_ne!(field_value_key(b"C1", b"2abc", &mut s), field_value_key(b"C12", b"abc", &mut s));
        assert!(slot(u64::MAX, 20) < 1 << 20);
    }
}
