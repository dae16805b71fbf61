//! Property-based fuzzing of the text readers: any bytes, in any format, give rows or an error
//! naming a line, never a panic; parsed rows are well-formed CSR. Case count: PROPTEST_CASES
//! (default 256 per target here; run e.g. PROPTEST_CASES=100000 locally).

use proptest::prelude::*;
use sparselin::data::readers::{make_parser, parse_block, ReaderSpec};

fn spec(format: &str) -> ReaderSpec {
    ReaderSpec { format: format.into(), bits: Some(12), n_features: Some(1000), ..Default::default() }
}

/// Bytes that look like the formats (digits, separators, newlines) mixed with anything.
fn texty() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"0123456789-+.:| \t\n,#'eExna\"".to_vec()),
            1 => any::<u8>(),
        ],
        0..400,
    )
}

fn check(format: &str, header: Option<&[u8]>, text: &[u8], binary: bool) {
    let Ok(parser) = make_parser(&spec(format), header, 1, true, binary) else { return };
    match parse_block(parser.as_ref(), text, 1) {
        Ok(p) => {
            assert_eq!(p.labels.len(), p.row_ends.len());
            assert_eq!(p.indices.len(), p.values.len());
            assert!(p.row_ends.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(p.row_ends.last().copied().unwrap_or(0) as usize, p.indices.len());
            assert!(p.values.iter().all(|v| v.is_finite()) && p.labels.iter().all(|v| v.is_finite()));
            if format == "svmlight" {
                assert!(p.indices.iter().all(|&i| (0..1000).contains(&i)));
            } else {
                assert!(p.indices.iter().all(|&i| (0..4096).contains(&i)));
            }
            if binary {
                assert!(p.labels.iter().all(|&l| l == 0.0 || l == 1.0));
            }
        }
        Err(e) => assert!(e.to_string().contains("line "), "{format}: error without a line number: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]

    #[test]
    fn svmlight_never_panics(text in texty(), binary in any::<bool>()) {
        check("svmlight", None, &text, binary);
    }

    #[test]
    fn vw_never_panics(text in texty(), binary in any::<bool>()) {
        check("vw", None, &text, binary);
    }

    #[test]
    fn criteo_never_panics(text in texty(), tabs in 0usize..45) {
        let mut line = b"1".to_vec();
        line.extend(std::iter::repeat_n(b'\t', tabs));
        line.extend_from_slice(&text);
        check("criteo", None, &line, false);
        check("criteo", None, &text, true);
    }

    #[test]
    fn csv_never_panics(text in texty(), header in "[a-z,\"]{0,20}") {
        check("csv", Some(header.as_bytes()), &text, false);
        check("csv", Some(b"label,a,b"), &text, true);
    }
}
