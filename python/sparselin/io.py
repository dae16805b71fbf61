"""Reading data: svmlight / libsvm, Vowpal Wabbit text, Criteo TSV and CSV files (gzip read
transparently), in memory or streamed, plus feature hashing for records and 64-bit keys.

Hashed ids (documented in ``src/data/hashing.rs``, stable across versions and platforms):
MurmurHash3 x64_128 with seed 0, low 64 bits, modulo ``2**bits``, of ``field + b"\\0" + value``
for a categorical value, of ``field + b"\\0"`` for a numeric field (the number is the feature
value), and of the 8 little-endian bytes of a 64-bit integer key.
"""

from __future__ import annotations

import glob as _glob
import json
import os

import numpy as np
import scipy.sparse as sp

from . import _core

FORMATS = ("svmlight", "vw", "criteo", "csv")
_EXTENSIONS = {".svm": "svmlight", ".svmlight": "svmlight", ".libsvm": "svmlight", ".vw": "vw", ".csv": "csv",
               ".tsv": "criteo"}


def load_svmlight(path, n_features: int | None = None, zero_based="auto"):
    """Reads an svmlight / libsvm file into ``(X, y)``: X a float32 ``scipy.sparse.csr_matrix``,
    y float32 labels as written. ``qid:`` fields and ``#`` comments are ignored. ``zero_based``
    is True, False or "auto" (one-based unless some id is 0). A malformed line raises ValueError
    naming its line number."""
    if zero_based not in (True, False, "auto"):
        raise ValueError(f"zero_based must be True, False or 'auto', got {zero_based!r}")
    base = {True: "true", False: "false", "auto": "auto"}[zero_based]
    if n_features is not None and int(n_features) < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    (indptr, indices, values), y, n = _core.load_svmlight(os.fspath(path), n_features, base)
    X = sp.csr_matrix((values, indices, indptr), shape=(indptr.size - 1, n))
    return X, y


def _expand(paths):
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        matches = sorted(_glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not matches:
            raise FileNotFoundError(f"no file matches {p}")
        out.extend(matches)
    if not out:
        raise ValueError("no input files given")
    return out


def _sniff(path):
    """The format of a file without a telling extension, from its first line, when unambiguous."""
    import gzip

    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            line = f.readline(1 << 16).decode("utf-8", "replace").rstrip("\r\n")
    except OSError:
        return None
    tokens = line.split()
    if line.count("\t") == 39:
        return "criteo"
    if "|" in line:
        return "vw"
    if tokens and all(":" in t for t in tokens[1:]) and len(tokens) > 1:
        return "svmlight"
    if "," in line and ":" not in line:
        return "csv"
    return None


def detect_format(path) -> str:
    """The format from the extension (.svm/.svmlight/.libsvm, .vw, .tsv = Criteo, .csv; .gz
    allowed), else from the first line when it is unambiguous."""
    name = os.fspath(path)
    if name.endswith(".gz"):
        name = name[:-3]
    fmt = _EXTENSIONS.get(os.path.splitext(name)[1].lower()) or _sniff(path)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {os.fspath(path)} from its extension or first line; "
                         f"give format= one of {FORMATS}")
    return fmt


class FileData:
    """Text files as training data, read in chunks of ``window`` rows by a background thread while
    the model trains (rows are shuffled inside each window), so files larger than memory train
    in bounded memory. Pass it as X to ``fit``.

    ``format``: "svmlight", "vw", "criteo", "csv" or None (from the extension: .svm/.libsvm,
    .vw, .tsv (Criteo), .csv; ``.gz`` allowed). ``bits``: hashed formats use ids in
    ``[0, 2**bits)``. svmlight: ``n_features`` and ``zero_based`` (found by a first pass when not
    given). CSV: ``label`` column (default "label" or "click"), ``numeric`` columns,
    ``categorical`` columns (default: all others), ``ignore``d columns, ``delimiter``.
    ``cache``: True (next to the first file, ``.slcache``) or a path: the first pass writes a
    binary copy that later epochs and fits read instead of parsing; rebuilt when the files
    change or the cache is damaged. ``transform``: a fitted ``PercentileDiscretizer`` /
    ``HashingDiscretizer`` applied to every window on the fly (calibrate it on ``head()``).
    Binary classifiers take labels 0/1 or -1/+1 (read as 0/1)."""

    def __init__(self, paths, format=None, bits=20, n_features=None, zero_based="auto", label=None, numeric=(),
                 categorical=(), ignore=(), delimiter=None, window=65536, cache=None, transform=None):
        self.paths = _expand(paths)
        fmt = format or detect_format(self.paths[0])
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if zero_based not in (True, False, "auto"):
            raise ValueError(f"zero_based must be True, False or 'auto', got {zero_based!r}")
        if int(window) < 1:
            raise ValueError(f"window must be at least 1 row, got {window}")
        self.format = fmt
        self.bits = int(bits)
        self.n_features = None if n_features is None else int(n_features)
        self.zero_based = zero_based
        self.label, self.numeric, self.categorical = label, list(numeric), list(categorical)
        self.ignore, self.delimiter, self.window = list(ignore), delimiter, int(window)
        if cache is True:
            cache = self.paths[0] + ".slcache"
        self.cache = None if cache in (None, False) else os.fspath(cache)
        if transform is not None and not hasattr(transform, "_disc"):
            raise TypeError("transform must be a fitted PercentileDiscretizer or HashingDiscretizer")
        self.transform = transform

    def spec_json(self, n_features=None, zero_based=None) -> str:
        spec = {"format": self.format}
        if self.format == "svmlight":
            n = n_features if n_features is not None else self.n_features
            if n is not None:
                spec["n_features"] = int(n)
            zb = zero_based if zero_based is not None else self.zero_based
            if zb != "auto":
                spec["zero_based"] = bool(zb)
        else:
            spec["bits"] = self.bits
        if self.format == "csv":
            spec.update(label=self.label, numeric=self.numeric, categorical=self.categorical, ignore=self.ignore,
                        delimiter=self.delimiter)
        return json.dumps(spec)

    def resolve(self, n_features=None):
        """(n_features, zero_based) of the files; svmlight may need one pass to find them."""
        return _core.resolve_files(self.paths, self.spec_json(n_features))

    def read(self, binary=False, n_features=None, collect_keys=False):
        """All rows in memory: (X csr_matrix, y, sample_weight or None, (keys, slots) or None),
        discretized when the FileData has a ``transform``."""
        (indptr, indices, values), y, w, n, stats = _core.read_files(self.paths, self.spec_json(n_features), binary,
                                                                    collect_keys)
        X = sp.csr_matrix((values, indices, indptr), shape=(indptr.size - 1, n))
        if self.transform is not None:
            X = self.transform.transform(X)
        return X, y, w, stats

    def head(self, n_rows=100_000, binary=False):
        """The first ``n_rows`` rows, read without the rest of the files (e.g. to calibrate a
        discretizer on a sample): ``(X, y)``, not discretized."""
        (indptr, indices, values), y, n = _core.read_head(self.paths, self.spec_json(), binary, int(n_rows))
        return sp.csr_matrix((values, indices, indptr), shape=(indptr.size - 1, n)), y


def read(paths, format=None, *, bits=20, n_features=None, zero_based="auto", label=None, numeric=(), categorical=(),
         ignore=(), delimiter=None, return_weights=False):
    """Reads text files of any supported format into memory, parsing in parallel:
    ``(X, y)`` (and ``sample_weight`` with ``return_weights=True``; VW importances)."""
    data = FileData(paths, format=format, bits=bits, n_features=n_features, zero_based=zero_based, label=label,
                    numeric=numeric, categorical=categorical, ignore=ignore, delimiter=delimiter)
    X, y, w, _ = data.read()
    if return_weights:
        return X, y, (np.ones(y.size, np.float32) if w is None else w)
    return X, y


class FeatureHasher:
    """Hashes records into CSR rows over ``2**bits`` ids, with the same ids as the file readers.

    ``transform(records)``: an iterable of dicts ``{field: value}``; a str value is categorical
    (id of (field, value), value 1), a number is numeric (id of field, value kept), None/NaN is
    skipped. ``transform_frame(df, categorical=..., numeric=...)`` does the same for pandas columns.
    ``collision_rate_`` after a transform: share of the distinct keys seen that share a slot."""

    def __init__(self, bits=20):
        if not 1 <= int(bits) <= 40:
            raise ValueError(f"bits must be in [1, 40], got {bits}")
        self.bits = int(bits)

    def _build(self, rows, cat_fields, cat_values, cat_rows, num_fields, num_values, num_rows):
        ids = np.concatenate([_core.hash_categorical(cat_fields, cat_values, self.bits),
                              _core.hash_numeric(num_fields, self.bits)]).astype(np.int64)
        vals = np.concatenate([np.ones(len(cat_fields), np.float32), np.asarray(num_values, np.float32)])
        row_of = np.concatenate([np.asarray(cat_rows, np.int64), np.asarray(num_rows, np.int64)])
        keys = set(zip(cat_fields, cat_values)) | {(f, None) for f in num_fields}
        X = sp.csr_matrix((vals, (row_of, ids)), shape=(rows, 2**self.bits), dtype=np.float32)
        X.sort_indices()
        distinct_slots = len(set(ids.tolist()))
        self.collision_rate_ = 1.0 - distinct_slots / len(keys) if keys else 0.0
        return X

    def transform(self, records):
        cat_f, cat_v, cat_r, num_f, num_v, num_r = [], [], [], [], [], []
        n = 0
        for r, record in enumerate(records):
            n = r + 1
            for field, value in record.items():
                if value is None:
                    continue
                if isinstance(value, str):
                    cat_f.append(str(field)), cat_v.append(value), cat_r.append(r)
                elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                    if np.isnan(value):
                        continue
                    if not np.isfinite(value):
                        raise ValueError(f"record {r}, field {field!r}: value {value} is not finite")
                    num_f.append(str(field)), num_v.append(float(value)), num_r.append(r)
                else:
                    raise TypeError(f"record {r}, field {field!r}: value {value!r} is neither a str nor a number")
        # CSR keeps duplicate (row, id) pairs summed, like repeated ids in a row.
        return self._build(n, cat_f, cat_v, cat_r, num_f, num_v, num_r)

    def transform_frame(self, df, categorical=(), numeric=()):
        cat_f, cat_v, cat_r, num_f, num_v, num_r = [], [], [], [], [], []
        for col in categorical:
            s = df[col]
            mask = s.notna().to_numpy()
            rows = np.flatnonzero(mask)
            cat_f += [str(col)] * rows.size
            cat_v += s[mask].astype(str).tolist()
            cat_r += rows.tolist()
        for col in numeric:
            s = df[col].astype(float)
            mask = s.notna().to_numpy()
            rows = np.flatnonzero(mask)
            num_f += [str(col)] * rows.size
            num_v += s[mask].tolist()
            num_r += rows.tolist()
        return self._build(len(df), cat_f, cat_v, cat_r, num_f, num_v, num_r)


def from_records(sample_ids, keys, values, bits=20):
    """DataRecord-style input: (sample id, 64-bit feature key, value) triples -> CSR over
    ``2**bits`` hashed ids. Rows follow the sorted distinct sample ids (returned too); repeated
    keys of a sample add up. Returns ``(X, row_sample_ids, collision_rate)``."""
    sample_ids = np.asarray(sample_ids)
    keys = np.ascontiguousarray(np.asarray(keys), dtype=np.uint64)
    values = np.asarray(values, dtype=np.float32)
    if not (sample_ids.shape == keys.shape == values.shape) or sample_ids.ndim != 1:
        raise ValueError("sample_ids, keys and values must be 1-D arrays of the same length")
    if not np.isfinite(values).all():
        raise ValueError(f"value at position {int(np.argmin(np.isfinite(values)))} is not finite")
    uniq, rows = np.unique(sample_ids, return_inverse=True)
    ids, distinct, slots = _core.hash_keys(keys, int(bits))
    X = sp.csr_matrix((values, (rows, ids)), shape=(uniq.size, 2**int(bits)), dtype=np.float32)
    return X, uniq, (1.0 - slots / distinct) if distinct else 0.0
