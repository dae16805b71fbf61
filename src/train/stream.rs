//! Training from a stream of chunks (files larger than memory): a reader thread parses the next
//! chunk while the trainer works on the current one (double buffering through a channel of
//! capacity 1), and rows are shuffled inside each chunk (the shuffle window). Peak memory is
//! about three chunks, whatever the size of the files.

use std::sync::mpsc::sync_channel;
use std::time::Instant;

use super::trainer::{fit, FitOptions, Progress, TrainData};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::features::discretize::Discretizer;

use crate::data::readers::cache::{cache_key, CacheReader, CacheWriter};
use crate::data::readers::source::{Chunk, FileSource, Resolved};
use crate::data::readers::KeySet;
use crate::data::CsrView;
use crate::error::{Error, Result};
use crate::model::Model;

#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub epoch_losses: Vec<f64>,
    pub samples: u64,
    pub seconds: f64,
    /// Seconds the trainer waited for the reader.
    pub waiting: f64,
    pub chunks: u64,
    /// Distinct hashed keys seen in the first epoch (when collected).
    pub keys: Option<KeySet>,
}

/// Trains `options.epochs` epochs; `source(epoch)` gives that epoch's chunks (from the files or
/// a cache). `on_progress` gets samples done in the current epoch.
pub fn fit_stream(
    model: &Model,
    source: &mut dyn FnMut(usize) -> Result<Box<dyn Iterator<Item = Result<Chunk>> + Send>>,
    options: &FitOptions,
    on_progress: &mut dyn FnMut(&Progress) -> Result<()>,
) -> Result<StreamReport> {
    let start = Instant::now();
    let mut report = StreamReport::default();
    for epoch in 0..options.epochs {
        let chunks = source(epoch)?;
        let mut epoch_loss = 0.0;
        let mut epoch_samples = 0u64;
        let result: Result<()> = std::thread::scope(|scope| {
            // The receiver is a local of this closure: returning early (an error) drops it,
            // which ends the reader at its next send, before the scope joins it.
            let (tx, rx) = sync_channel::<Result<Chunk>>(1);
            scope.spawn(move || {
                for chunk in chunks {
                    let failed = chunk.is_err();
                    if tx.send(chunk).is_err() || failed {
                        break;
                    }
                }
            });
            loop {
                let waited = Instant::now();
                let Ok(chunk) = rx.recv() else { break };
                report.waiting += waited.elapsed().as_secs_f64();
                let mut chunk = chunk?;
                if let Some(keys) = chunk.keys.take() {
                    match &mut report.keys {
                        Some(all) => all.extend(keys),
                        None => report.keys = Some(keys),
                    }
                }
                if chunk.labels.is_empty() {
                    continue;
                }
                let x = CsrView::new(&chunk.matrix.indptr, &chunk.matrix.indices, &chunk.matrix.values, chunk.matrix.n_features)?;
                let data = TrainData::new(x, &chunk.labels, chunk.weights.as_deref(), model)?;
                let done_before = epoch_samples;
                let per_chunk = FitOptions { epochs: 1, max_batches: None, continue_epoch: false, ..options.clone() };
                let r = fit(model, &data, &per_chunk, &mut |p: &Progress| {
                    on_progress(&Progress { epoch, epochs: options.epochs, samples_done: done_before + p.samples_done, samples_per_epoch: 0 })
                })
                .map_err(|e| match e {
                    Error::Diverged(m) => Error::Diverged(format!("{m} (after {} samples of epoch {})", done_before, epoch + 1)),
                    other => other,
                })?;
                epoch_loss += r.epoch_losses.iter().sum::<f64>() * r.samples as f64;
                epoch_samples += r.samples;
                report.chunks += 1;
            }
            Ok(())
        });
        result?;
        report.samples += epoch_samples;
        report.epoch_losses.push(epoch_loss / epoch_samples.max(1) as f64);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes every chunk that passes through into a cache, completing it at the end.
struct Tee {
    inner: FileSource,
    writer: Option<CacheWriter>,
}

impl Iterator for Tee {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        match self.inner.next() {
            Some(Ok(chunk)) => {
                if let Some(w) = &mut self.writer {
                    if let Err(e) = w.write(&chunk) {
                        if let Some(w) = self.writer.take() {
                            w.abandon();
                        }
                        return Some(Err(e));
                    }
                }
                Some(Ok(chunk))
            }
            Some(Err(e)) => {
                if let Some(w) = self.writer.take() {
                    w.abandon();
                }
                Some(Err(e))
            }
            None => {
                if let Some(w) = self.writer.take() {
                    if let Err(e) = w.finish() {
                        return Some(Err(e));
                    }
                }
                None
            }
        }
    }
}

/// Applies a discretizer to every chunk, in the reader thread (so the trainer gets bin ids).
struct Transformed {
    inner: Box<dyn Iterator<Item = Result<Chunk>> + Send>,
    discretizer: Arc<Discretizer>,
}

impl Iterator for Transformed {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        self.inner.next().map(|chunk| {
            let mut chunk = chunk?;
            chunk.matrix = self.discretizer.transform(&chunk.matrix.view()?)?;
            Ok(chunk)
        })
    }
}

/// Trains on text files in bounded memory (`window` rows shuffled at a time). With `cache`,
/// the first pass writes a binary copy that later epochs (and later fits, while the files are
/// unchanged) read instead of parsing; a stale, incomplete or corrupt cache is rebuilt. With a
/// `discretizer`, each chunk is discretized on the fly (the cache keeps the raw rows).
#[allow(clippy::too_many_arguments)]
pub fn fit_files(
    model: &Model,
    paths: &[PathBuf],
    resolved: &Resolved,
    window: usize,
    cache: Option<&Path>,
    collect_keys: bool,
    discretizer: Option<&Discretizer>,
    options: &FitOptions,
    on_progress: &mut dyn FnMut(&Progress) -> Result<()>,
) -> Result<StreamReport> {
    let n_features = discretizer.map_or(resolved.n_features as u64, |d| d.n_outputs());
    if n_features != model.config.n_features as u64 {
        return Err(crate::invalid!(
            "the files give {n_features} features{} but the model was built for n_features={}",
            if discretizer.is_some() { " after discretization" } else { "" },
            model.config.n_features
        ));
    }
    let discretizer = discretizer.map(|d| Arc::new(d.clone()));
    let settings = format!("{:?} n_features={} shift={} binary={}", resolved.spec, resolved.n_features, resolved.shift, resolved.binary);
    let key = match cache {
        Some(_) => Some(cache_key(paths, &settings)?),
        None => None,
    };
    let mut verified = false;
    let mut raw_source = |epoch: usize| -> Result<Box<dyn Iterator<Item = Result<Chunk>> + Send>> {
        if let (Some(path), Some(key)) = (cache, &key) {
            if let Some(reader) = CacheReader::open(path, key, resolved.n_features, !verified) {
                verified = true;
                return Ok(Box::new(reader));
            }
            verified = true; // the cache written now is trusted for the rest of this fit
            let files = FileSource::new(paths.to_vec(), resolved.clone(), window, epoch == 0 && collect_keys && resolved.spec.is_hashed())?;
            return Ok(Box::new(Tee { inner: files, writer: Some(CacheWriter::create(path, key)?) }));
        }
        Ok(Box::new(FileSource::new(paths.to_vec(), resolved.clone(), window, epoch == 0 && collect_keys && resolved.spec.is_hashed())?))
    };
    let mut source = |epoch: usize| -> Result<Box<dyn Iterator<Item = Result<Chunk>> + Send>> {
        let chunks = raw_source(epoch)?;
        Ok(match &discretizer {
            Some(d) => Box::new(Transformed { inner: chunks, discretizer: Arc::clone(d) }),
            None => chunks,
        })
    };
    fit_stream(model, &mut source, options, on_progress)
}
