//! `cargo bench --bench train`: single-thread training samples/s of the reference LR and MLP on
//! make_ctr data, straight on the Rust core (no Python). Plain timing, median of 3 epochs.

use std::time::Instant;

use sparselin::data::synthetic::{make_ctr, CtrSpec};
use sparselin::data::Task;
use sparselin::model::{Head, Model, ModelConfig};
use sparselin::optim::{OptimizerConfig, OptimizerKind};
use sparselin::train::{fit, FitOptions, TrainData};

fn main() {
    let rows: usize = std::env::var("BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let threads: usize = std::env::var("BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let day = make_ctr(&CtrSpec { n_rows: rows, n_features: 1 << 20, seed: 0, ..Default::default() }).unwrap().remove(0);
    let x = day.matrix.view().unwrap();
    println!("make_ctr rows={rows} nnz/row={:.1} threads={threads}", x.nnz() as f64 / rows as f64);
    for (name, head, width, lr) in [
        ("LR", Head::Linear, 1, 0.01),
        ("MLP", Head::Mlp { hidden: vec![64, 16] }, 50, 0.001),
    ] {
        for batch_size in [256, 512, 1024] {
            let model = Model::new(ModelConfig {
                n_features: 1 << 20,
                sparse_width: width,
                head: head.clone(),
                task: Task::Binary,
                normalize: true,
                optimizer: OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: lr, l1: 0.0, l2: 0.0 },
                seed: 0,
            })
            .unwrap();
            let data = TrainData::new(x, &day.labels, None, &model).unwrap();
            let options = FitOptions { epochs: 1, batch_size, threads, ..Default::default() };
            let mut rates = Vec::new();
            for _ in 0..3 {
                let start = Instant::now();
                fit(&model, &data, &options, &mut |_| Ok(())).unwrap();
                rates.push(rows as f64 / start.elapsed().as_secs_f64());
            }
            rates.sort_by(f64::total_cmp);
            println!("{name:4} batch {batch_size:5}: {:>10.0} samples/s", rates[1]);
        }
    }
}
