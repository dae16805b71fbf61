//! `cargo bench --bench kernels`: the sparse layer's kernels alone (criterion), on 512-row
//! make_ctr batches over a 2^20 x 50 table, next to plain-Rust versions of the same memory
//! traffic (no atomics, no normalization, no undo log): the roofline the kernels are measured
//! against. Throughput is per non-zero (normalize, gather, backward) or per distinct row
//! (optimizer steps). Each iteration takes the next of 16 batches, so rows are not all in cache.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use sparselin::data::synthetic::{make_ctr, CtrSpec};
use sparselin::data::{CsrView, Task};
use sparselin::gpu::batch::HostBatch;
use sparselin::model::sparse_linear::{Prepare, SparseLinear};
use sparselin::model::workspace::{PreparedBatch, RowSlots, Workspace};
use sparselin::model::{Head, Model, ModelConfig};
use sparselin::optim::{OptimizerConfig, OptimizerKind, UndoLog};
use sparselin::train::shared::{huge_page_zeros, prefetch_slice, rows_ahead};

const N_FEATURES: usize = 1 << 20;
const WIDTH: usize = 50;
const BATCH: usize = 512;
const BATCHES: usize = 16;

fn model(kind: OptimizerKind) -> Model {
    Model::new(ModelConfig {
        n_features: N_FEATURES,
        sparse_width: WIDTH,
        head: Head::Mlp { hidden: vec![64, 16] },
        task: Task::Binary,
        normalize: true,
        optimizer: OptimizerConfig { kind, learning_rate: 0.001, l1: 0.0, l2: 0.0 },
        seed: 0,
    })
    .unwrap()
}

/// The batches' rows, and each batch prepared (normalized, ids deduplicated).
fn batches(model: &Model, x: &CsrView<'_, i64, i64>) -> (Vec<Vec<u32>>, Vec<PreparedBatch>) {
    let rows: Vec<Vec<u32>> = (0..BATCHES).map(|b| ((b * BATCH) as u32..((b + 1) * BATCH) as u32).collect()).collect();
    let prepared = rows
        .iter()
        .map(|r| {
            let mut p = PreparedBatch::default();
            model.sparse.prepare(x, r, model.norm.as_ref(), Prepare::Now, &mut p);
            p
        })
        .collect();
    (rows, prepared)
}

fn kernels(c: &mut Criterion) {
    let day = make_ctr(&CtrSpec { n_rows: BATCH * BATCHES, n_features: N_FEATURES, seed: 0, ..Default::default() }).unwrap().remove(0);
    let x = day.matrix.view().unwrap();
    let adam = model(OptimizerKind::LazyAdam);
    let (rows, prepared) = batches(&adam, &x);
    let nnz: usize = prepared.iter().map(|p| p.nnz_y.len()).sum::<usize>() / BATCHES;
    let distinct: usize = prepared.iter().map(|p| p.slots.len()).sum::<usize>() / BATCHES;
    println!("make_ctr batches of {BATCH} rows: {nnz} non-zeros, {distinct} distinct ids on average");

    let mut g = c.benchmark_group("per non-zero");
    g.throughput(Throughput::Elements(nnz as u64));
    let mut k = 0;
    let mut scratch = PreparedBatch::default();
    g.bench_function("normalize + dedup (prepare)", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            adam.sparse.prepare(&x, &rows[k], adam.norm.as_ref(), Prepare::Now, &mut scratch);
        })
    });
    let mut host = HostBatch::default();
    let mut slots = RowSlots::default();
    let targets = vec![0.0f32; BATCH * BATCHES];
    g.bench_function("GPU host batch with transpose (HostBatch::build)", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            host.build(&x, &rows[k], &targets, None, &mut slots);
        })
    });
    let mut ws: Workspace = adam.workspace();
    let bias = vec![0.0f32; WIDTH];
    g.bench_function("gather-sum (load_rows + sum_rows)", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            let p = &prepared[k];
            ws.row_cache.resize(p.slots.len() * WIDTH, 0.0);
            adam.sparse.load_rows(&p.slots.ids, 0, &mut ws.row_cache[..p.slots.len() * WIDTH]);
            ws.pre[0].resize(BATCH * WIDTH, 0.0);
            adam.sparse.sum_rows(p, &bias, &ws.row_cache[..p.slots.len() * WIDTH], 0, &mut ws.pre[0]);
        })
    });
    let dh: Vec<f32> = (0..BATCH * WIDTH).map(|i| ((i % 7) as f32 - 3.0) * 1e-3).collect();
    // One workspace per batch, prepared, with its rows loaded and its non-zeros grouped by slot
    // (`backward_deferred`), so the backward passes are timed alone and any benchmark can run
    // alone (a filter on the command line skips the others).
    let mut prepared_ws: Vec<Workspace> = rows
        .iter()
        .map(|r| {
            let mut w = adam.workspace();
            adam.sparse.prepare(&x, r, adam.norm.as_ref(), Prepare::Now, &mut w.batch);
            w.row_cache.resize(w.batch.slots.len() * WIDTH, 0.0);
            adam.sparse.load_rows(&w.batch.slots.ids, 0, &mut w.row_cache);
            adam.sparse.backward_deferred(&dh, true, &mut w);
            w
        })
        .collect();
    g.bench_function("backward (dW rows + feature-bias gradient)", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            adam.sparse.backward(&dh, true, &mut prepared_ws[k]);
        })
    });
    // What training runs for the MLP instead: group the non-zeros by slot and sum the
    // feature-bias gradients; the row gradients are summed during the update (below).
    g.bench_function("backward grouped by slot (backward_deferred)", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            adam.sparse.backward_deferred(&dh, true, &mut prepared_ws[k]);
            assert!(prepared_ws[k].rows_deferred);
        })
    });
    // Roofline: the gather-sum on a plain f32 table, one W row per non-zero, no dedup.
    // Plain arrays on the pages the model's tables use (huge pages), so the roofline measures
    // the same memory system.
    let mut plain_w = huge_page_zeros::<f32>(N_FEATURES * WIDTH).unwrap();
    plain_w.iter_mut().enumerate().for_each(|(i, w)| *w = (i % 13) as f32 * 1e-3);
    let mut h = vec![0.0f32; BATCH * WIDTH];
    let nnz_ids: Vec<Vec<u64>> = prepared.iter().map(|p| p.nnz_slot.iter().map(|&s| p.slots.ids[s as usize]).collect()).collect();
    g.bench_function("roofline: plain gather-sum", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            let (p, ids) = (&prepared[k], &nnz_ids[k]);
            let mut start = 0;
            for (h_row, &end) in h.chunks_exact_mut(WIDTH).zip(&p.row_end) {
                h_row.fill(0.0);
                for j in start..end {
                    if let Some(&ahead) = ids.get(j + rows_ahead(WIDTH)) {
                        prefetch_slice(&plain_w[ahead as usize * WIDTH..(ahead as usize + 1) * WIDTH]);
                    }
                    let id = ids[j] as usize;
                    let y = p.nnz_y[j];
                    for (hv, &w) in h_row.iter_mut().zip(&plain_w[id * WIDTH..(id + 1) * WIDTH]) {
                        *hv += w * y;
                    }
                }
                start = end;
            }
            std::hint::black_box(&h);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("per distinct row");
    g.throughput(Throughput::Elements(distinct as u64));
    let grads: Vec<f32> =
        (0..prepared.iter().map(|p| p.slots.len()).max().unwrap() * WIDTH).map(|i| ((i % 5) as f32 - 2.0) * 1e-4).collect();
    let mut undo = UndoLog::default();
    let mut t = 0;
    for (name, model) in [("lazy_adam", &adam), ("sgd", &model(OptimizerKind::Sgd))] {
        g.bench_function(format!("{name} step with undo log (apply_rows)"), |b| {
            b.iter(|| {
                k = (k + 1) % BATCHES;
                t += 1;
                let ids = &prepared[k].slots.ids;
                undo.clear();
                let step = model.config.optimizer.step(t);
                assert!(step.apply_rows(&model.sparse.weight, 0, ids, WIDTH, &grads[..ids.len() * WIDTH], &mut undo));
            })
        });
    }
    // The Lazy Adam step as the MLP trains: each row's gradient summed from the batch's
    // non-zeros (grouped by `backward_deferred` above) just before the row is updated.
    let mut grad_row = vec![0.0f32; WIDTH];
    g.bench_function("lazy_adam step summing row gradients at the update (apply_rows_with)", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            t += 1;
            let w = &prepared_ws[k];
            undo.clear();
            let step = adam.config.optimizer.step(t);
            assert!(step.apply_rows_with(&adam.sparse.weight, 0, &w.batch.slots.ids, WIDTH, &mut grad_row, &mut undo, |s, g| {
                SparseLinear::row_gradient(&dh, &w.by_slot, &w.by_slot_start, s, g)
            }));
        })
    });
    // Roofline: the same updates on plain f32 arrays, no undo log, no finiteness check.
    let zeros = || huge_page_zeros::<f32>(N_FEATURES * WIDTH).unwrap();
    let (mut w, mut m, mut v) = (zeros(), zeros(), zeros());
    w.copy_from_slice(&plain_w);
    g.bench_function("roofline: plain adam row update", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            let ids = &prepared[k].slots.ids;
            for (s, &id) in ids.iter().enumerate() {
                // Prefetched as far ahead as the model's update does.
                if let Some(&ahead) = ids.get(s + rows_ahead(WIDTH)) {
                    let r = ahead as usize * WIDTH..(ahead as usize + 1) * WIDTH;
                    [&w[r.clone()], &m[r.clone()], &v[r]].into_iter().for_each(prefetch_slice);
                }
                let r = id as usize * WIDTH..(id as usize + 1) * WIDTH;
                let g = &grads[s * WIDTH..(s + 1) * WIDTH];
                for (((w, m), v), &g) in w[r.clone()].iter_mut().zip(&mut m[r.clone()]).zip(&mut v[r]).zip(g) {
                    *m = 0.9 * *m + 0.1 * g;
                    *v = 0.999 * *v + 0.001 * g * g;
                    *w -= 1e-3 * *m / (v.sqrt() + 1e-8);
                }
            }
        })
    });
    g.bench_function("roofline: plain sgd row update", |b| {
        b.iter(|| {
            k = (k + 1) % BATCHES;
            let ids = &prepared[k].slots.ids;
            for (s, &id) in ids.iter().enumerate() {
                if let Some(&ahead) = ids.get(s + rows_ahead(WIDTH)) {
                    prefetch_slice(&w[ahead as usize * WIDTH..(ahead as usize + 1) * WIDTH]);
                }
                let r = id as usize * WIDTH..(id as usize + 1) * WIDTH;
                for (w, &g) in w[r].iter_mut().zip(&grads[s * WIDTH..(s + 1) * WIDTH]) {
                    *w -= 0.01 * g;
                }
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = kernels
}
criterion_main!(benches);
