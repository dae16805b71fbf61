//! `cargo bench --bench train`: single-thread training samples/s of the reference LR and MLP on
//! make_ctr data, straight on the Rust core (no Python). Plain timing, median of 3 epochs.

use std::time::Instant;

use sparselin::data::synthetic::{make_ctr, CtrSpec};
use sparselin::data::{CsrView, Task};
use sparselin::model::{Head, Model, ModelConfig};
use sparselin::optim::{OptimizerConfig, OptimizerKind};
use sparselin::train::row_partition::fit_row_partitioned;
use sparselin::train::{fit, FitOptions, Parallel, TrainData};

fn main() {
    let rows: usize = std::env::var("BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let threads: usize = std::env::var("BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    // BENCH_PARALLEL: hogwild (default), columns, or rows (the talk's approach A, bench only).
    // BENCH_NONORM: train without the per-feature normalization (to see what it costs), on values
    // scaled by their feature's max |value|.
    let row_partitioned = std::env::var("BENCH_PARALLEL").as_deref() == Ok("rows");
    let parallel = match std::env::var("BENCH_PARALLEL").as_deref() {
        Ok("columns") => Parallel::Columns,
        _ => Parallel::Hogwild,
    };
    let mut day = make_ctr(&CtrSpec { n_rows: rows, n_features: 1 << 20, seed: 0, ..Default::default() }).unwrap().remove(0);
    if std::env::var("BENCH_NONORM").is_ok() {
        // Without normalization, train on max-abs scaled values, as the Python bench's peers do.
        let mut scale = vec![0.0f32; 1 << 20];
        for (&id, &v) in day.matrix.indices.iter().zip(&day.matrix.values) {
            scale[id as usize] = scale[id as usize].max(v.abs());
        }
        for (&id, v) in day.matrix.indices.iter().zip(day.matrix.values.iter_mut()) {
            // A feature whose values are all 0 keeps them (0 / 0 would be NaN).
            if scale[id as usize] > 0.0 {
                *v /= scale[id as usize];
            }
        }
    }
    // 32-bit row pointers and ids, as scipy.sparse gives them to the Python API.
    let indptr: Vec<i32> = day.matrix.indptr.iter().map(|&p| p as i32).collect();
    let indices: Vec<i32> = day.matrix.indices.iter().map(|&i| i as i32).collect();
    let x = CsrView::new(&indptr, &indices, &day.matrix.values, 1 << 20).unwrap();
    println!(
        "make_ctr rows={rows} nnz/row={:.1} threads={threads} parallel={}",
        x.nnz() as f64 / rows as f64,
        if row_partitioned { "rows".to_string() } else { format!("{parallel:?}") }
    );
    // BENCH_CASES picks cases, e.g. "MLP:lazy_adam:512,LR:sgd:512"; default: both models with
    // lazy_adam at the talk's three batch sizes.
    let cases: Vec<(String, String, usize)> = match std::env::var("BENCH_CASES") {
        Ok(spec) => spec
            .split(',')
            .map(|c| {
                let p: Vec<&str> = c.split(':').collect();
                (p[0].to_string(), p[1].to_string(), p[2].parse().expect("batch size"))
            })
            .collect(),
        Err(_) => ["LR", "MLP"].iter().flat_map(|m| [256, 512, 1024].map(|b| (m.to_string(), "lazy_adam".to_string(), b))).collect(),
    };
    for (name, optimizer, batch_size) in cases {
        let (head, width, lr) = match name.as_str() {
            "LR" => (Head::Linear, 1, if optimizer == "sgd" { 0.25 } else { 0.01 }),
            _ => (Head::Mlp { hidden: vec![64, 16] }, 50, 0.001),
        };
        {
            let model = Model::new(ModelConfig {
                n_features: 1 << 20,
                sparse_width: width,
                head: head.clone(),
                task: Task::Binary,
                normalize: std::env::var("BENCH_NONORM").is_err(),
                optimizer: OptimizerConfig { kind: OptimizerKind::parse(&optimizer).unwrap(), learning_rate: lr, l1: 0.0, l2: 0.0 },
                seed: 0,
            })
            .unwrap();
            let data = TrainData::new(x, &day.labels, None, &model).unwrap();
            let options = FitOptions { epochs: 1, batch_size, threads, parallel, ..Default::default() };
            let mut rates = Vec::new();
            for _ in 0..3 {
                let start = Instant::now();
                if row_partitioned {
                    fit_row_partitioned(&model, &data, batch_size, threads).unwrap();
                } else {
                    fit(&model, &data, &options, &mut |_| Ok(())).unwrap();
                }
                rates.push(rows as f64 / start.elapsed().as_secs_f64());
                if std::env::var("BENCH_VERBOSE").is_ok() {
                    eprintln!("  epoch: {:.0} samples/s", rates.last().unwrap());
                }
            }
            rates.sort_by(f64::total_cmp);
            println!("{name:4} {optimizer:9} batch {batch_size:5}: {:>10.0} samples/s", rates[1]);
        }
    }
}
