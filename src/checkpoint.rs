//! Model files: safetensors (every tensor in f32, readable by numpy/torch) plus JSON metadata
//! (format name and version, library version, model config, step counters, a checksum of the
//! tensor bytes, and an opaque `extra` string the Python layer uses for estimator state).
//! Files are written atomically: temp file in the same directory, fsync, rename.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig};
use crate::rng::mix64;

pub const FORMAT: &str = "sparselin";
pub const FORMAT_VERSION: u32 = 1;

/// A loaded model and the extra metadata string it was saved with.
pub struct Loaded {
    pub model: Model,
    pub extra: String,
}

pub(crate) fn checksum(mut state: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        state = mix64(state ^ u64::from_le_bytes(c.try_into().unwrap()));
    }
    for &b in chunks.remainder() {
        state = mix64(state ^ b as u64);
    }
    state
}

fn to_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn to_bytes(model: &Model, extra: &str) -> Result<Vec<u8>> {
    let tensors = model.tensors().into_iter().map(|(name, shape, t)| (name, shape, t.to_vec())).collect();
    let config = serde_json::to_string(&model.config).map_err(|e| Error::Io(e.to_string()))?;
    tensors_to_bytes(
        tensors,
        vec![
            ("config", config),
            ("step", model.step.load(Relaxed).to_string()),
            ("epochs_done", model.epochs_done.load(Relaxed).to_string()),
            ("batches_into_epoch", model.batches_into_epoch.load(Relaxed).to_string()),
            ("extra", extra.to_string()),
        ],
    )
}

/// Named f32 tensors as safetensors bytes, with `metadata` plus the format name and version, the
/// library version and a checksum of the tensor bytes (in name order). Model files and
/// parameter-shard checkpoints are both written here.
pub(crate) fn tensors_to_bytes(tensors: Vec<(String, Vec<usize>, Vec<f32>)>, metadata: Vec<(&str, String)>) -> Result<Vec<u8>> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(name, shape, values)| (name, shape, to_le_bytes(&values))).collect();
    data.sort_by(|a, b| a.0.cmp(&b.0));
    let sum = data.iter().fold(0u64, |s, (_, _, bytes)| checksum(s, bytes));
    let metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("library_version", env!("CARGO_PKG_VERSION").to_string()),
        ("checksum", format!("{sum:016x}")),
    ]
    .into_iter()
    .chain(metadata)
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Io(format!("cannot serialize the tensors: {e}")))?;
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| Error::Io(format!("cannot serialize the tensors: {e}")))
}

/// A sparselin safetensors file whose format and version were checked; tensors are read after
/// `verify` has checked their names, shapes and checksum.
pub(crate) struct TensorFile<'a> {
    pub meta: HashMap<String, String>,
    st: SafeTensors<'a>,
}

impl<'a> TensorFile<'a> {
    pub fn open(bytes: &'a [u8]) -> Result<Self> {
        let corrupt = |e: &dyn std::fmt::Display| bad(format!("not a readable sparselin model file (truncated or corrupted?): {e}"));
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(&e))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(&e))?;
        let file = Self { meta: header.metadata().clone().unwrap_or_default(), st };
        if file.field("format")? != FORMAT {
            return Err(bad("not a sparselin model file (metadata 'format' is not 'sparselin')"));
        }
        let version = file.field("format_version")?;
        if version != FORMAT_VERSION.to_string() {
            return Err(bad(format!(
                "model file format version {version} (written by sparselin {}) cannot be read by sparselin {} (format version {FORMAT_VERSION})",
                file.meta.get("library_version").map_or("?", |s| s.as_str()),
                env!("CARGO_PKG_VERSION")
            )));
        }
        Ok(file)
    }

    pub fn field(&self, k: &str) -> Result<String> {
        self.meta.get(k).cloned().ok_or_else(|| bad(format!("model file metadata has no '{k}': not a sparselin model file")))
    }

    pub fn number(&self, k: &str) -> Result<u64> {
        self.field(k)?.parse().map_err(|_| bad(format!("metadata '{k}' is not a number")))
    }

    /// Checks that the file holds exactly the `expected` tensors (F32, those shapes) and that
    /// their bytes match the checksum.
    pub fn verify(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        if self.st.len() != expected.len() {
            return Err(bad(format!("model file has {} tensors, expected {}", self.st.len(), expected.len())));
        }
        let mut names: Vec<&(String, Vec<usize>)> = expected.iter().collect();
        names.sort();
        let mut sum = 0u64;
        for (name, shape) in names {
            let view = self.st.tensor(name).map_err(|_| bad(format!("model file has no tensor '{name}'")))?;
            if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
                return Err(bad(format!(
                    "tensor '{name}' is {:?} {:?} in the file but the model needs F32 {shape:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            sum = checksum(sum, view.data());
        }
        if format!("{sum:016x}") != self.field("checksum")? {
            return Err(bad("model file checksum does not match its contents: the file is corrupted or was modified"));
        }
        Ok(())
    }

    /// Copies tensor `name` into `into` (same length, checked by `verify`).
    pub fn read_into(&self, name: &str, into: &crate::train::SharedF32) -> Result<()> {
        let data = self.st.tensor(name).map_err(|_| bad(format!("model file has no tensor '{name}'")))?.data();
        let values: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        if values.len() != into.len() {
            return Err(bad(format!("tensor '{name}' has {} values, expected {}", values.len(), into.len())));
        }
        into.copy_from(&values);
        Ok(())
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::Io(format!("cannot {what} {}: {e}", path.display()));
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| Error::Io(format!("'{}' is not a file path", path.display())))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_file() {
            return Err(Error::Io(format!(
                "{} exists and is not a regular file; it was left as it is",
                path.display()
            )));
        }
    }
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("create a temporary file for", e))?;
        f.write_all(bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("flush", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("replace", e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn save(model: &Model, path: &Path, extra: &str) -> Result<()> {
    write_atomically(path, &to_bytes(model, extra)?)
}

pub(crate) fn bad(msg: impl std::fmt::Display) -> Error {
    Error::BadModelFile(msg.to_string())
}

pub fn from_bytes(bytes: &[u8]) -> Result<Loaded> {
    read_model(bytes, false)
}

/// Reads a model file. With `inference_only`, optimizer state is checked (checksum) but not
/// kept: the model holds only what prediction needs.
pub fn read_model(bytes: &[u8], inference_only: bool) -> Result<Loaded> {
    let file = TensorFile::open(bytes)?;
    if let Some(shard) = file.meta.get("shard") {
        return Err(bad(format!(
            "this is the checkpoint of parameter-server shard {shard}, not a model: \
             sparselin.distributed assembles the model from all shards"
        )));
    }
    let mut config: ModelConfig =
        serde_json::from_str(&file.field("config")?).map_err(|e| bad(format!("model config in the file is invalid: {e}")))?;
    // The file holds every tensor of the model its config describes: checked first, so that a
    // damaged config (e.g. a huge layer size) cannot make the probe below allocate gigabytes.
    if config.memory_bytes() > bytes.len() as u128 {
        return Err(bad("model config in the file is invalid: it describes a model larger than the file"));
    }
    // The full model defines which tensors the file must hold.
    let expected: Vec<(String, Vec<usize>)> = {
        let probe = ModelConfig { n_features: 1, ..config.clone() };
        Model::new(probe)
            .map_err(|e| bad(format!("model config in the file is invalid: {e}")))?
            .tensors()
            .into_iter()
            .map(|(name, mut shape, _)| {
                if shape.len() == 2 && name.starts_with("sparse.weight") || name.starts_with("norm.") {
                    shape[0] = config.n_features;
                }
                (name, shape)
            })
            .collect()
    };
    file.verify(&expected)?;
    if inference_only {
        config.optimizer.kind = crate::optim::OptimizerKind::Sgd;
    }
    let model = Model::new(config).map_err(|e| bad(format!("model config in the file is invalid: {e}")))?;
    for (name, _, tensor) in model.tensors() {
        file.read_into(&name, tensor)?;
    }
    model.step.store(file.number("step")?, Relaxed);
    model.epochs_done.store(file.number("epochs_done")?, Relaxed);
    model.batches_into_epoch.store(file.number("batches_into_epoch")?, Relaxed);
    Ok(Loaded { model, extra: file.meta.get("extra").cloned().unwrap_or_default() })
}

pub fn load(path: &Path) -> Result<Loaded> {
    load_with(path, false)
}

pub fn load_with(path: &Path, inference_only: bool) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    read_model(&bytes, inference_only).map_err(|e| match e {
        Error::BadModelFile(m) => Error::BadModelFile(format!("{}: {m}", path.display())),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Task;
    use crate::model::Head;
    use crate::optim::{OptimizerConfig, OptimizerKind};

    fn model() -> Model {
        Model::new(ModelConfig {
            n_features: 100,
            sparse_width: 4,
            head: Head::Mlp { hidden: vec![3] },
            task: Task::Binary,
            normalize: true,
            optimizer: OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: 0.01, l1: 0.0, l2: 0.0 },
            seed: 9,
        })
        .unwrap()
    }

    #[test]
    fn round_trip_and_corruption() {
        let m = model();
        m.tensor("norm.max_abs").unwrap().set(3, 7.5);
        m.step.store(42, Relaxed);
        let bytes = to_bytes(&m, "{\"a\":1}").unwrap();
        let loaded = from_bytes(&bytes).unwrap();
        assert_eq!(loaded.extra, "{\"a\":1}");
        assert_eq!(loaded.model.step.load(Relaxed), 42);
        for (name, _, t) in m.tensors() {
            assert_eq!(t.to_vec(), loaded.model.tensor(&name).unwrap().to_vec(), "{name}");
        }
        assert!(matches!(from_bytes(&bytes[..bytes.len() - 10]), Err(Error::BadModelFile(_))));
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 5] ^= 0x40;
        let e = from_bytes(&flipped).err().unwrap();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(from_bytes(b"garbage").is_err());
        let lean = read_model(&bytes, true).unwrap().model;
        assert!(lean.tensors().iter().all(|(n, _, _)| !n.ends_with(".m") && !n.ends_with(".v")));
        assert_eq!(lean.tensor("sparse.weight").unwrap().to_vec(), m.tensor("sparse.weight").unwrap().to_vec());
    }
}
