//! Property-based fuzzing (proptest) of the core's entry points that take untrusted input:
//!
//! - (a) `data::svmlight::parse_svmlight` on arbitrary bytes, on token soup built from a
//!   dictionary of hostile pieces, and on valid documents with random byte mutations: it never
//!   panics, and an `Ok` is a valid CSR (`OwnedCsr::view()` succeeds) with one finite label per
//!   row. Valid documents also round-trip exactly.
//! - (b) `CsrView::new` on arbitrary and on nearly valid `indptr`/`indices`/`values`: it never
//!   panics, and it accepts exactly what an independent validator accepts (then every row's ids
//!   are in `[0, n_features)` and its values finite).
//! - (c) `Model::train_batch` on arbitrary valid batches (empty rows, duplicate ids and rows,
//!   values from ±1e-30 to ±1e30, a batch of one) under random head / optimizer / normalize /
//!   learning-rate / l2 configurations: it never panics, returns `Ok(finite loss)` or
//!   `Diverged`, and afterwards every tensor is finite; a `Diverged` leaves the weights of
//!   before this batch or of before the previous one.
//! - (d) `checkpoint::from_bytes` on arbitrary bytes and on valid model files with random byte
//!   flips, truncations, appended bytes and numbers rewritten in the JSON header: it never
//!   panics, a flip in the tensor data is caught by the checksum, and a file that still loads
//!   holds exactly the original tensors.
//!
//! Case counts: `PROPTEST_CASES` (default below, sized so this file runs in a few seconds under
//! `cargo test`). Long local runs: `PROPTEST_CASES=20000 cargo test --release --test fuzz`
//! (with `CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true`
//! to keep the debug checks). Crashes found are pinned as plain `#[test]`s at the end.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;

use sparselin::checkpoint;
use sparselin::data::svmlight::{parse_svmlight, IdBase};
use sparselin::data::{CsrView, Idx, OwnedCsr, Task};
use sparselin::model::Batch;
use sparselin::optim::{OptimizerConfig, OptimizerKind};
use sparselin::{Error, Head, Model, ModelConfig};

const DEFAULT_CASES: u32 = 1000;

// A global allocator that, on a thread that asks for it, refuses (returns null for) any single
// allocation above a cap and remembers it: loading a damaged kilobyte-sized model file must not
// try to allocate gigabytes. `SharedF32` turns a refused allocation into an error; anything
// else that is refused aborts the test binary, which is as visible.
struct CappedAlloc;

thread_local! {
    static ALLOC_CAP: Cell<usize> = const { Cell::new(usize::MAX) };
    static LARGEST_REFUSED: Cell<usize> = const { Cell::new(0) };
}

fn over_cap(size: usize) -> bool {
    let over = ALLOC_CAP.try_with(|c| size > c.get()).unwrap_or(false);
    if over {
        let _ = LARGEST_REFUSED.try_with(|r| r.set(r.get().max(size)));
    }
    over
}

// SAFETY: every call is forwarded unchanged to `System`, or answered with null, which the
// `GlobalAlloc` contract allows for any allocation request.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) { std::ptr::null_mut() } else { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) { std::ptr::null_mut() } else { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_cap(new_size) { std::ptr::null_mut() } else { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: CappedAlloc = CappedAlloc;

/// Runs `f` with single allocations above `cap` refused on this thread; returns its result and
/// the largest refused request (0 if none).
fn with_alloc_cap<T>(cap: usize, f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST_REFUSED.with(|r| r.set(0));
    ALLOC_CAP.with(|c| c.set(cap));
    let out = f();
    ALLOC_CAP.with(|c| c.set(usize::MAX));
    (out, LARGEST_REFUSED.with(|r| r.get()))
}

/// Loading a model file of at most a few kilobytes never asks for more than this at once.
const LOAD_ALLOC_CAP: usize = 64 << 20;

/// Outcome counts of one target, printed at its end (`cargo test --test fuzz -- --nocapture`).
#[derive(Default)]
struct Stats(std::cell::RefCell<std::collections::BTreeMap<&'static str, u64>>);

impl Stats {
    fn count(&self, outcome: &'static str) {
        *self.0.borrow_mut().entry(outcome).or_default() += 1;
    }
}

/// Runs one target for `PROPTEST_CASES` cases (default `DEFAULT_CASES`); panics with the
/// shrunk failing input.
fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value, &Stats) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_CASES);
    // Failures are pinned as explicit tests at the end of this file, not in a regressions file.
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let stats = Stats::default();
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |value| test(value, &stats));
    let counts = stats.0.borrow();
    eprintln!("fuzz {name}: {cases} cases in {:.1} s; outcomes (shrinking included) {counts:?}", started.elapsed().as_secs_f64());
    if let Err(e) = result {
        panic!("fuzz target {name} failed: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// (a) svmlight
// ---------------------------------------------------------------------------------------------

/// Pieces that stress a number / token parser.
const DICT: &[&str] = &[
    "", " ", "\t", "\r", "\n", "\r\n", "\x0b", "\x0c", "\u{a0}", "\u{663}", "\u{2028}", "\u{feff}", ":", "::", "#",
    "qid", "qid:", "qid:1", "1:", ":1", "0", "-0", "+0", "1", "-1", "+1", "1.5", ".5", "5.", "1e", "1e40", "-1e40",
    "1e-50", "3.4028235e38", "3.4028236e38", "1e-45", "nan", "NaN", "-nan", "inf", "-inf", "infinity", "9223372036854775807",
    "9223372036854775808", "-9223372036854775808", "18446744073709551615", "18446744073709551616", "4294967295",
    "4294967296", "2147483647", "2147483648", "0x1f", "1_0", "00000000000000000000001", "9223372036854775807:1",
    "9223372036854775806:1", "18446744073709551615:1", "0:0", "-1:1", "1:-0", "1.5:1", "1:1:1", "\u{ff}", "é",
];

fn dict_piece() -> impl Strategy<Value = String> {
    prop::sample::select(DICT).prop_map(String::from)
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (-1000i64..1000).prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f32>().prop_map(|v| format!("{v}")),
        any::<f32>().prop_map(|v| format!("{v:e}")),
        any::<f64>().prop_map(|v| format!("{v:e}")),
        dict_piece(),
    ]
}

/// A line of svmlight-ish tokens: mostly `id:value`, sometimes anything from the dictionary.
fn soup_line() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        4 => ((0u64..64).prop_map(|i| i.to_string()), number_text()).prop_map(|(i, v)| format!("{i}:{v}")),
        1 => (number_text(), number_text()).prop_map(|(i, v)| format!("{i}:{v}")),
        1 => number_text(),
        1 => dict_piece(),
    ];
    (number_text(), prop::collection::vec(token, 0..6), prop::option::of(dict_piece()), prop::bool::ANY).prop_map(
        |(label, tokens, comment, crlf)| {
            let mut line = label;
            for t in tokens {
                line.push(' ');
                line.push_str(&t);
            }
            if let Some(c) = comment {
                line.push_str(" # ");
                line.push_str(&c);
            }
            line.push_str(if crlf { "\r\n" } else { "\n" });
            line
        },
    )
}

/// A document of valid rows (zero-based ids < 100, finite values) and its rendering.
#[derive(Clone, Debug)]
struct ValidDoc {
    labels: Vec<f32>,
    rows: Vec<Vec<(i64, f32)>>,
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.0f32),
        Just(1.0f32),
        Just(-1.0f32),
        any::<f32>().prop_filter("finite", |v| v.is_finite()),
        (-30i32..=30, -9.99f32..9.99).prop_map(|(e, m)| m * 10f32.powi(e)),
    ]
}

fn valid_doc() -> impl Strategy<Value = ValidDoc> {
    prop::collection::vec(
        (prop_oneof![Just(0.0f32), Just(1.0f32), Just(-1.0f32), finite_f32()], prop::collection::vec((0i64..100, finite_f32()), 0..6)),
        0..10,
    )
    .prop_map(|rows| ValidDoc { labels: rows.iter().map(|r| r.0).collect(), rows: rows.into_iter().map(|r| r.1).collect() })
}

impl ValidDoc {
    fn render(&self, one_based: bool, extras: bool) -> Vec<u8> {
        let mut s = String::new();
        for (k, (label, row)) in self.labels.iter().zip(&self.rows).enumerate() {
            s.push_str(&format!("{label}"));
            if extras && k % 3 == 1 {
                s.push_str(" qid:7");
            }
            for (id, v) in row {
                s.push_str(&format!(" {}:{v}", id + one_based as i64));
            }
            if extras && k % 4 == 2 {
                s.push_str(" # a comment 1:2");
            }
            s.push('\n');
            if extras && k % 5 == 3 {
                s.push_str("# a comment line\n\n");
            }
        }
        s.into_bytes()
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, String),
    Delete(Index, usize),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<Index>(), dict_piece()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(i, mask) if len > 0 => bytes[i.index(len)] ^= mask,
            Mutation::Insert(i, s) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, s.bytes());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            _ => {}
        }
    }
    bytes
}

fn id_base() -> impl Strategy<Value = IdBase> {
    prop_oneof![Just(IdBase::Zero), Just(IdBase::One), Just(IdBase::Auto)]
}

fn n_features_arg() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![Just(None), (0usize..80).prop_map(Some), Just(Some(1usize << 40)), Just(Some(usize::MAX))]
}

/// Parses and checks what an `Ok` promises.
fn check_svmlight(bytes: &[u8], n_features: Option<usize>, base: IdBase, stats: &Stats) -> Result<(), TestCaseError> {
    match parse_svmlight(bytes, n_features, base) {
        Ok(d) => {
            let m = &d.matrix;
            if let Err(e) = m.view() {
                return Err(TestCaseError::fail(format!("Ok but not a valid CSR ({e}): {m:?}")));
            }
            prop_assert_eq!(d.labels.len(), m.n_rows());
            prop_assert!(d.labels.iter().all(|l| l.is_finite()));
            if let Some(n) = n_features {
                prop_assert_eq!(m.n_features, n);
            }
            stats.count(if m.indices.is_empty() { "ok, no entries" } else { "ok, with entries" });
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            stats.count("error");
        }
    }
    Ok(())
}

#[test]
fn svmlight_arbitrary_bytes() {
    let strategy = (prop::collection::vec(any::<u8>(), 0..512), n_features_arg(), id_base());
    run("svmlight_arbitrary_bytes", strategy, |(bytes, n, base), stats| check_svmlight(&bytes, n, base, stats));
}

#[test]
fn svmlight_token_soup() {
    let strategy = (prop::collection::vec(soup_line(), 0..8), n_features_arg(), id_base());
    run("svmlight_token_soup", strategy, |(lines, n, base), stats| check_svmlight(lines.concat().as_bytes(), n, base, stats));
}

#[test]
fn svmlight_mutated_documents() {
    let strategy = (valid_doc(), prop::bool::ANY, prop::collection::vec(mutation(), 1..5), n_features_arg(), id_base());
    run("svmlight_mutated_documents", strategy, |(doc, one_based, mutations, n, base), stats| {
        check_svmlight(&mutate(doc.render(one_based, true), &mutations), n, base, stats)
    });
}

/// Unmutated valid documents parse back exactly (values are written with Rust's shortest
/// round-trip formatting), zero- or one-based, with comments, qid and blank lines.
#[test]
fn svmlight_valid_documents_round_trip() {
    run("svmlight_valid_documents_round_trip", (valid_doc(), prop::bool::ANY), |(doc, one_based), stats| {
        let base = if one_based { IdBase::One } else { IdBase::Zero };
        let d = parse_svmlight(&doc.render(one_based, true), Some(100), base).unwrap();
        prop_assert_eq!(&d.labels, &doc.labels);
        let mut expected = OwnedCsr { indptr: vec![0], n_features: 100, ..Default::default() };
        for row in &doc.rows {
            for &(id, v) in row {
                expected.indices.push(id);
                expected.values.push(v);
            }
            expected.indptr.push(expected.indices.len() as i64);
        }
        prop_assert_eq!(d.matrix, expected);
        stats.count(if doc.rows.is_empty() { "empty document" } else { "round trip" });
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// (b) CsrView::new
// ---------------------------------------------------------------------------------------------

/// An independent statement of what a valid CSR is.
fn csr_is_valid<P: Idx, I: Idx>(indptr: &[P], indices: &[I], values: &[f32], n_features: usize) -> bool {
    if n_features == 0 || indptr.is_empty() || indices.len() != values.len() || indptr[0].as_i64() != 0 {
        return false;
    }
    if indptr.windows(2).any(|w| w[1].as_i64() < w[0].as_i64()) || indptr[indptr.len() - 1].as_i64() != indices.len() as i64 {
        return false;
    }
    indices.iter().all(|i| i.as_i64() >= 0 && (i.as_i64() as u128) < n_features as u128) && values.iter().all(|v| v.is_finite())
}

fn check_csr<P: Idx + PartialEq + std::fmt::Debug, I: Idx + PartialEq + std::fmt::Debug>(
    indptr: &[P],
    indices: &[I],
    values: &[f32],
    n_features: usize,
    stats: &Stats,
) -> Result<(), TestCaseError> {
    let valid = csr_is_valid(indptr, indices, values, n_features);
    stats.count(if valid { "valid" } else { "invalid" });
    match CsrView::new(indptr, indices, values, n_features) {
        Ok(view) => {
            prop_assert!(valid, "accepted an invalid CSR");
            prop_assert_eq!(view.n_rows(), indptr.len() - 1);
            prop_assert_eq!(view.nnz(), indices.len());
            let mut seen = 0;
            for r in 0..view.n_rows() {
                let (ids, vals) = view.row(r);
                prop_assert_eq!(ids.len(), vals.len());
                prop_assert!(ids.iter().all(|i| i.as_i64() >= 0 && (i.as_i64() as usize) < n_features));
                prop_assert!(vals.iter().all(|v| v.is_finite()));
                seen += ids.len();
            }
            prop_assert_eq!(seen, indices.len());
        }
        Err(e) => {
            prop_assert!(!valid, "rejected a valid CSR: {}", e);
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

fn any_value() -> impl Strategy<Value = f32> {
    prop_oneof![8 => finite_f32(), 1 => Just(f32::NAN), 1 => Just(f32::INFINITY), 1 => Just(f32::NEG_INFINITY), 1 => any::<f32>()]
}

/// A valid CSR (as i64 arrays), then maybe one entry of one array changed.
fn nearly_valid_csr() -> impl Strategy<Value = (Vec<i64>, Vec<i64>, Vec<f32>, usize)> {
    (prop::collection::vec(0usize..5, 0..8), 1usize..20)
        .prop_flat_map(|(counts, n)| {
            let nnz: usize = counts.iter().sum();
            let mut indptr = vec![0i64];
            for c in &counts {
                indptr.push(indptr.last().unwrap() + *c as i64);
            }
            (
                Just(indptr),
                prop::collection::vec(prop_oneof![10 => 0i64..n as i64, 1 => -3i64..n as i64 + 3], nnz),
                prop::collection::vec(prop_oneof![20 => finite_f32(), 1 => any_value()], nnz),
                prop_oneof![10 => Just(n), 1 => 0usize..25],
            )
        })
        .prop_flat_map(|(indptr, indices, values, n)| {
            let edit = prop_oneof![
                4 => Just(None),
                1 => (any::<Index>(), prop_oneof![-3i64..30, any::<i64>()]).prop_map(Some),
            ];
            (Just(indptr), Just(indices), Just(values), Just(n), edit, prop::option::of(any::<Index>()))
        })
        .prop_map(|(mut indptr, mut indices, mut values, n, edit, drop_value)| {
            if let Some((at, v)) = edit {
                if at.index(2) == 0 {
                    let k = at.index(indptr.len());
                    indptr[k] = v;
                } else if !indices.is_empty() {
                    let k = at.index(indices.len());
                    indices[k] = v;
                }
            }
            if let Some(k) = drop_value.filter(|_| !values.is_empty()) {
                values.remove(k.index(values.len()));
            }
            (indptr, indices, values, n)
        })
}

fn narrow(v: &[i64]) -> Vec<i32> {
    v.iter().map(|&x| x as i32).collect()
}

#[test]
fn csr_arbitrary_arrays() {
    let strategy = (
        prop::collection::vec(prop_oneof![0i64..12, any::<i64>()], 0..8),
        prop::collection::vec(prop_oneof![-2i64..12, any::<i64>()], 0..12),
        prop::collection::vec(any_value(), 0..12),
        prop_oneof![0usize..14, Just(usize::MAX), Just(1usize << 33)],
    );
    run("csr_arbitrary_arrays", strategy, |(indptr, indices, values, n), stats| {
        check_csr(&indptr, &indices, &values, n, stats)?;
        check_csr(&narrow(&indptr), &narrow(&indices), &values, n, stats)?;
        check_csr(&indptr, &narrow(&indices), &values, n, stats)
    });
}

#[test]
fn csr_nearly_valid_arrays() {
    run("csr_nearly_valid_arrays", nearly_valid_csr(), |(indptr, indices, values, n), stats| {
        check_csr(&indptr, &indices, &values, n, stats)?;
        check_csr(&narrow(&indptr), &narrow(&indices), &values, n, stats)?;
        let wide: Vec<u32> = indices.iter().map(|&x| x as u32).collect();
        check_csr(&indptr, &wide, &values, n, stats)
    });
}

// ---------------------------------------------------------------------------------------------
// (c) one training step
// ---------------------------------------------------------------------------------------------

/// Magnitudes from 1e-30 to 1e30, both signs, and exact 0 / ±1.
fn extreme_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        1 => Just(0.0f32),
        1 => Just(1.0f32),
        1 => Just(-1.0f32),
        4 => (-30i32..=30, 1.0f32..10.0, prop::bool::ANY).prop_map(|(e, m, neg)| {
            let v = m * 10f32.powi(e);
            if neg { -v } else { v }
        }),
    ]
}

fn model_config() -> impl Strategy<Value = ModelConfig> {
    let head = prop_oneof![
        Just((Head::Linear, 1usize)),
        (prop::collection::vec(1usize..6, 0..3), 1usize..6).prop_map(|(hidden, w)| (Head::Mlp { hidden }, w)),
    ];
    let kind = prop_oneof![Just(OptimizerKind::Sgd), Just(OptimizerKind::LazyAdam), Just(OptimizerKind::Adagrad), Just(OptimizerKind::Ftrl)];
    let lr = prop_oneof![8 => (-6i32..=2).prop_map(|e| 10f32.powi(e)), 1 => (3i32..=30).prop_map(|e| 10f32.powi(e))];
    let l2 = prop_oneof![6 => Just(0.0f32), 3 => (-6i32..=3).prop_map(|e| 10f32.powi(e)), 1 => Just(1e30f32)];
    let l1 = prop_oneof![Just(0.0f32), (-4i32..=1).prop_map(|e| 10f32.powi(e))];
    (
        head,
        prop_oneof![3 => 1usize..40, 1 => 40usize..5000],
        prop_oneof![Just(Task::Binary), Just(Task::Regression)],
        prop::bool::ANY,
        kind,
        lr,
        l1,
        l2,
        any::<u64>(),
    )
        .prop_map(|((head, width), n_features, task, normalize, kind, learning_rate, l1, l2, seed)| {
            // FTRL is for the linear model; l1 only with FTRL.
            let kind = if kind == OptimizerKind::Ftrl && head != Head::Linear { OptimizerKind::Adagrad } else { kind };
            let l1 = if kind == OptimizerKind::Ftrl { l1 } else { 0.0 };
            ModelConfig {
                n_features,
                sparse_width: width,
                head,
                task,
                normalize,
                optimizer: OptimizerConfig { kind, learning_rate, l1, l2 },
                seed,
            }
        })
}

#[derive(Clone, Debug)]
struct TrainCase {
    config: ModelConfig,
    x: OwnedCsr,
    targets: Vec<f32>,
    weights: Option<Vec<f32>>,
    /// Row lists of the successive batches (rows may repeat).
    steps: Vec<Vec<u32>>,
}

fn train_case() -> impl Strategy<Value = TrainCase> {
    (model_config(), prop_oneof![2 => Just(1usize), 3 => 1usize..12]).prop_flat_map(|(config, n_rows)| {
        let n = config.n_features as i64;
        // Ids concentrated on a few values, so rows and batches repeat them.
        let id = prop_oneof![2 => 0i64..n.min(4), 1 => 0i64..n];
        let row = prop::collection::vec((id, extreme_f32()), 0..7);
        let target = match config.task {
            Task::Binary => prop_oneof![Just(0.0f32), Just(1.0f32)].boxed(),
            Task::Regression => extreme_f32().boxed(),
        };
        let weight = prop_oneof![3 => 0.0f32..3.0, 1 => extreme_f32().prop_map(f32::abs)];
        let steps = prop::collection::vec(
            prop_oneof![
                2 => Just((0..n_rows as u32).collect::<Vec<u32>>()),
                1 => prop::collection::vec(0..n_rows as u32, 1..n_rows + 2),
            ],
            1..5,
        );
        (
            Just(config),
            prop::collection::vec(row, n_rows),
            prop::collection::vec(target, n_rows),
            prop::option::of(prop::collection::vec(weight, n_rows)),
            steps,
        )
            .prop_map(|(config, rows, targets, weights, steps)| {
                let mut x = OwnedCsr { indptr: vec![0], n_features: config.n_features, ..Default::default() };
                for row in rows {
                    for (id, v) in row {
                        x.indices.push(id);
                        x.values.push(v);
                    }
                    x.indptr.push(x.indices.len() as i64);
                }
                TrainCase { config, x, targets, weights, steps }
            })
    })
}

fn snapshot(model: &Model) -> Vec<(String, Vec<f32>)> {
    model.tensors().into_iter().map(|(name, _, t)| (name, t.to_vec())).collect()
}

/// Weights and optimizer state (not `max_abs`, a statistic the diverging batch may update).
fn learned(s: &[(String, Vec<f32>)]) -> Vec<&(String, Vec<f32>)> {
    s.iter().filter(|(n, _)| n != "norm.max_abs").collect()
}

fn check_training(case: &TrainCase, stats: &Stats) -> Result<(), TestCaseError> {
    let model = Model::new(case.config.clone()).map_err(|e| TestCaseError::fail(format!("Model::new: {e}")))?;
    let x = case.x.view().unwrap();
    let mut ws = model.workspace();
    // snapshots[k]: the tensors before step k.
    let mut snapshots = vec![snapshot(&model)];
    for (k, rows) in case.steps.iter().enumerate() {
        let batch = Batch { x: &x, rows, targets: &case.targets, weights: case.weights.as_deref() };
        let result = model.train_batch(&batch, &mut ws);
        let now = snapshot(&model);
        for (name, values) in &now {
            prop_assert!(values.iter().all(|v| v.is_finite()), "step {}: {} is not finite after {:?}", k, name, result);
        }
        match result {
            Ok(loss) => {
                prop_assert!(loss.is_finite(), "Ok with loss {}", loss);
                stats.count("step ok");
            }
            Err(Error::Diverged(why)) => {
                stats.count(if why.contains("undone") { "diverged, previous update undone" } else { "diverged, update refused" });
                let kept = learned(&now);
                prop_assert!(
                    kept == learned(&snapshots[k]) || (k > 0 && kept == learned(&snapshots[k - 1])),
                    "step {}: Diverged ({}) left weights that are neither those before this batch nor before the previous one",
                    k,
                    why
                );
            }
            Err(e) => return Err(TestCaseError::fail(format!("step {k}: unexpected error {e:?}"))),
        }
        snapshots.push(now);
    }
    // Prediction on the same rows must not panic either.
    let mut out = vec![0.0f32; x.n_rows()];
    model.decision_function(&x, &mut out).map_err(|e| TestCaseError::fail(format!("decision_function: {e}")))?;
    Ok(())
}

#[test]
fn train_batch_keeps_every_tensor_finite() {
    run("train_batch_keeps_every_tensor_finite", train_case(), |case, stats| check_training(&case, stats));
}

// ---------------------------------------------------------------------------------------------
// (d) model files
// ---------------------------------------------------------------------------------------------

/// A small trained model's file.
fn model_file() -> impl Strategy<Value = Vec<u8>> {
    (model_config(), 1usize..30).prop_map(|(mut config, n_features)| {
        config.n_features = n_features;
        config.optimizer.learning_rate = 0.01;
        config.optimizer.l2 = config.optimizer.l2.min(1.0);
        let model = Model::new(config).unwrap();
        // One step so that weights and optimizer state are not all zero.
        let x = OwnedCsr { indptr: vec![0, 2, 3], indices: vec![0, (n_features - 1) as i64, 0], values: vec![1.0, 2.5, -3.0], n_features };
        let view = x.view().unwrap();
        let mut ws = model.workspace();
        let _ = model.train_batch(&Batch { x: &view, rows: &[0, 1], targets: &[1.0, 0.0], weights: None }, &mut ws);
        checkpoint::to_bytes(&model, "{\"estimator\": \"fuzz\"}").unwrap()
    })
}

/// Where the tensor data starts: after the 8-byte header length and the JSON header.
fn data_start(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

fn tensors_of(bytes: &[u8]) -> Vec<(String, Vec<f32>)> {
    snapshot(&checkpoint::from_bytes(bytes).unwrap().model)
}

/// Loads `bytes`; an `Ok` must hold exactly the tensors of `original`.
fn check_load(bytes: &[u8], original: &[u8], stats: &Stats) -> Result<bool, TestCaseError> {
    let (result, refused) = with_alloc_cap(LOAD_ALLOC_CAP, || checkpoint::from_bytes(bytes));
    prop_assert_eq!(refused, 0, "loading a {}-byte file asked for {} bytes at once", bytes.len(), refused);
    match result {
        Ok(loaded) => {
            prop_assert_eq!(snapshot(&loaded.model), tensors_of(original), "a damaged file loaded with other tensors");
            // And it serializes again.
            checkpoint::to_bytes(&loaded.model, &loaded.extra).map_err(|e| TestCaseError::fail(e.to_string()))?;
            stats.count("loaded (same tensors)");
            Ok(true)
        }
        Err(Error::BadModelFile(m)) => {
            prop_assert!(!m.is_empty());
            stats.count("rejected");
            Ok(false)
        }
        Err(e) => Err(TestCaseError::fail(format!("expected BadModelFile, got {e:?}"))),
    }
}

/// Rewrites the `k`-th run of digits of the JSON header as `number`, fixing the length prefix:
/// a well-formed file that says something else (shapes, offsets, config sizes, counters).
fn rewrite_header_number(bytes: &[u8], k: Index, number: &str) -> Vec<u8> {
    let start = data_start(bytes);
    let header = std::str::from_utf8(&bytes[8..start]).unwrap();
    let mut runs = Vec::new();
    let mut at = None;
    for (i, c) in header.char_indices() {
        match (c.is_ascii_digit(), at) {
            (true, None) => at = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                at = None;
            }
            _ => {}
        }
    }
    if runs.is_empty() {
        return bytes.to_vec();
    }
    let (s, e) = runs[k.index(runs.len())];
    let new_header = format!("{}{}{}", &header[..s], number, &header[e..]);
    let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(new_header.as_bytes());
    out.extend_from_slice(&bytes[start..]);
    out
}

#[test]
fn model_file_arbitrary_bytes() {
    let strategy = (prop::collection::vec(any::<u8>(), 0..1024), prop::option::of(0u64..2048));
    run("model_file_arbitrary_bytes", strategy, |(bytes, prefix), stats| {
        // With a plausible header length in front, the parser gets past its first check.
        let bytes = match prefix {
            Some(n) => [n.to_le_bytes().to_vec(), bytes].concat(),
            None => bytes,
        };
        let (result, refused) = with_alloc_cap(LOAD_ALLOC_CAP, || checkpoint::from_bytes(&bytes));
        prop_assert_eq!(refused, 0);
        match result {
            Ok(_) => prop_assert!(false, "random bytes loaded as a model"),
            Err(e) => prop_assert!(matches!(e, Error::BadModelFile(_)), "{:?}", e),
        }
        stats.count("rejected");
        Ok(())
    });
}

#[test]
fn model_file_byte_flips() {
    let strategy = (model_file(), prop::collection::vec((any::<Index>(), 1u8..=255), 1..4), prop::bool::ANY);
    run("model_file_byte_flips", strategy, |(file, flips, in_data), stats| {
        let start = data_start(&file);
        let mut bytes = file.clone();
        for (at, mask) in &flips {
            let k = if in_data { start + at.index(file.len() - start) } else { at.index(file.len()) };
            bytes[k] ^= mask;
        }
        let loaded = check_load(&bytes, &file, stats)?;
        if in_data && bytes != file {
            prop_assert!(!loaded, "a flip in the tensor data was not detected");
            let e = checkpoint::from_bytes(&bytes).err().unwrap();
            prop_assert!(e.to_string().contains("checksum"), "{}", e);
            stats.count("flip in the data: checksum error");
        }
        Ok(())
    });
}

#[test]
fn model_file_truncated_or_extended() {
    let strategy = (model_file(), any::<Index>(), prop::collection::vec(any::<u8>(), 0..16));
    run("model_file_truncated_or_extended", strategy, |(file, cut, tail), stats| {
        let truncated = &file[..cut.index(file.len())];
        prop_assert!(!check_load(truncated, &file, stats)?, "a truncated file loaded");
        let extended = [file.clone(), tail].concat();
        check_load(&extended, &file, stats)?;
        Ok(())
    });
}

#[test]
fn model_file_header_numbers_rewritten() {
    let number = prop_oneof![0u64..100, any::<u64>(), Just(u64::MAX), Just(1u64 << 32), (0u32..20).prop_map(|e| 10u64.pow(e))];
    let strategy = (model_file(), any::<Index>(), number, prop::bool::weighted(0.1));
    run("model_file_header_numbers_rewritten", strategy, |(file, k, number, negative), stats| {
        let number = if negative { format!("-{number}") } else { number.to_string() };
        check_load(&rewrite_header_number(&file, k, &number), &file, stats)?;
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Regressions: crashes the fuzzers found, pinned.
// ---------------------------------------------------------------------------------------------

/// Found by `svmlight_token_soup`: an explicit `n_features` above i64::MAX wrapped to a negative
/// bound in `CsrView` (ids were compared as i64), so the reader's `Ok` was not a valid CSR.
/// Fixed in `CsrView::check_entries` (ids compared as u64).
#[test]
fn regression_n_features_above_i64_max() {
    let d = parse_svmlight(b"0 0:0\n", Some(usize::MAX), IdBase::Auto).unwrap();
    assert!(d.matrix.view().is_ok());
    assert!(CsrView::new(&[0i64, 1][..], &[5i64][..], &[1.0][..], usize::MAX).is_ok());
    assert!(CsrView::new(&[0i64, 1][..], &[-1i64][..], &[1.0][..], usize::MAX).is_err());
}

/// Found by `svmlight_token_soup`: `n_features = Some(0)` gave `Ok` with 0 features (not a
/// valid CSR). Fixed in `parse_svmlight`: an error.
#[test]
fn regression_svmlight_n_features_zero() {
    let e = parse_svmlight(b"1\n", Some(0), IdBase::Auto).unwrap_err();
    assert!(e.to_string().contains("n_features must be at least 1"), "{e}");
}

/// Found by `svmlight_token_soup`: the id i64::MAX overflowed `max_id + 1` (a panic in debug
/// builds; in release a wrapped n_features of 1 and an `Ok` that was not a valid CSR). Fixed in
/// `parse_svmlight`.
#[test]
fn regression_svmlight_id_i64_max() {
    // Read as zero-based the id needs 2^63 features; "auto" reads this file as one-based.
    for (base, needed) in [(IdBase::Zero, 1usize << 63), (IdBase::Auto, (1usize << 63) - 1)] {
        let d = parse_svmlight(b"1 9223372036854775807:1\n", None, base).unwrap();
        assert_eq!(d.matrix.n_features, needed);
        assert!(d.matrix.view().is_ok());
        assert!(parse_svmlight(b"1 9223372036854775807:1\n", Some(10), base).is_err());
    }
}

/// Found by `model_file_header_numbers_rewritten`: a layer size in the header rewritten to a
/// huge number made `Dense::new` overflow `n_in * n_out` (a panic in debug builds), or, for
/// sizes that fit, allocate gigabytes (400 MB for `sparse_width` 10^8) before the tensor shapes
/// were compared. Fixed: `ModelConfig::memory_bytes` counts the dense layers too (saturating),
/// so `Model::new` refuses such sizes before allocating, and `read_model` first checks that the
/// file is large enough to hold the model its config describes.
#[test]
fn regression_model_file_with_a_huge_layer() {
    let model = Model::new(ModelConfig {
        n_features: 5,
        sparse_width: 4,
        head: Head::Mlp { hidden: vec![3] },
        task: Task::Binary,
        normalize: true,
        optimizer: OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: 0.01, l1: 0.0, l2: 0.0 },
        seed: 1,
    })
    .unwrap();
    let file = checkpoint::to_bytes(&model, "").unwrap();
    let header = std::str::from_utf8(&file[8..data_start(&file)]).unwrap();
    for (from, to) in [
        ("\\\"hidden\\\":[3]", "\\\"hidden\\\":[1000000000]"),
        ("\\\"hidden\\\":[3]", "\\\"hidden\\\":[18446744073709551615]"),
        ("\\\"sparse_width\\\":4", "\\\"sparse_width\\\":100000000"),
        ("\\\"sparse_width\\\":4", "\\\"sparse_width\\\":18446744073709551615"),
    ] {
        assert!(header.contains(from), "{from} not in {header}");
        let new_header = header.replace(from, to);
        let bytes = [(new_header.len() as u64).to_le_bytes().to_vec(), new_header.into_bytes(), file[data_start(&file)..].to_vec()].concat();
        let (result, refused) = with_alloc_cap(LOAD_ALLOC_CAP, || checkpoint::from_bytes(&bytes));
        assert_eq!(refused, 0, "{to}: asked for {refused} bytes");
        let e = result.err().unwrap();
        assert!(matches!(e, Error::BadModelFile(_)), "{to}: {e:?}");
    }
    // The same sizes given directly are refused with a clear error, not an overflow.
    let huge = ModelConfig { head: Head::Mlp { hidden: vec![usize::MAX] }, ..model.config.clone() };
    assert!(Model::new(huge).err().unwrap().to_string().contains("GiB"));
}
