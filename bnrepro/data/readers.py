"""The on-disk formats: idx files (the MNISTs), CIFAR-10's python pickles, and the processed cache.

Raw files are parsed here rather than by torchvision's dataset classes, which
insist on the md5 sums of the official files. Each reader returns uint8
images ``(N, C, H, W)`` and int64 labels in a dict (``x_train``, ``y_train``,
``x_test``, ``y_test``); :func:`raw_problem` says what is wrong with such a
dict, so that a corrupt file or cache is named, not trained on. The processed cache
(``cache_dir()/<name>.pt``, see :mod:`bnrepro.data.datasets`) is written
atomically.
"""

from __future__ import annotations

import gzip
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["DataNotFoundError", "IDX_FILES", "CIFAR_FILES", "read_idx", "load_idx_dir", "load_cifar_dir",
           "raw_problem", "read_cache", "write_cache"]

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class DataNotFoundError(RuntimeError):
    """No source could provide the dataset (or a provided file is corrupt)."""


def read_idx(path: Path) -> torch.Tensor:
    """Parse one idx file (optionally gzipped) holding unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataNotFoundError(f"cannot read {path}: {e}. Delete or replace the file.") from None
    # Header: two zero bytes, a type code (0x08 = uint8), the number of dims, then big-endian int32 sizes.
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataNotFoundError(f"{path} is not a uint8 idx file (bad header). Delete or replace the file.")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", ndim, offset=4))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataNotFoundError(f"{path} is truncated: header says {shape}, found {body.size} bytes of data. "
                                "Delete or replace the file.")
    return torch.from_numpy(body.reshape(shape).copy())


def load_idx_dir(folder: Path) -> dict:
    paths = []
    for stem in IDX_FILES:  # prefer the uncompressed file: no decompression needed
        found = [p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{stem}[.gz]")
        paths.append(found[0])
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    return {"x_train": xtr.unsqueeze(1), "y_train": ytr.long(),  # add the channel axis: (N, 1, 28, 28)
            "x_test": xte.unsqueeze(1), "y_test": yte.long()}


def load_cifar_dir(folder: Path) -> dict:
    def read(fname: str, convert):
        path = folder / fname
        if not path.is_file():
            raise FileNotFoundError(fname)
        try:  # pickle is CIFAR-10's own format; only point BNREPRO_DATA at files you trust
            with open(path, "rb") as f:
                return convert(pickle.load(f, encoding="bytes"))
        except Exception as e:
            raise DataNotFoundError(f"{path} is not in CIFAR-10 format ({type(e).__name__}: {e}). "
                                    "Delete or replace it.") from None

    def batch(d: dict):  # each row of b"data" is one image: 1024 R, then 1024 G, then 1024 B bytes
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return torch.from_numpy(x.copy()), torch.as_tensor(d[b"labels"], dtype=torch.int64)

    parts = [read(fname, batch) for fname in CIFAR_FILES]
    out = {"x_train": torch.cat([p[0] for p in parts[:5]]), "y_train": torch.cat([p[1] for p in parts[:5]]),
           "x_test": parts[5][0], "y_test": parts[5][1]}
    if (folder / "batches.meta").is_file():  # else the registry's names (they are fixed anyway)
        out["classes"] = read("batches.meta", lambda d: [c.decode() for c in d[b"label_names"]])
    return out


def raw_problem(raw) -> str:
    """What is wrong with a raw dataset dict ('' if nothing): guards against corrupt files and caches."""
    try:
        xs, ys = (raw["x_train"], raw["x_test"]), (raw["y_train"], raw["y_test"])
        if not all(isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4 for x in xs):
            return "images are not uint8 (N, C, H, W)"
        if not all(isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (len(x),)
                   for x, y in zip(xs, ys)):
            return "labels are not int64 with one per image"
        if xs[0].shape[1:] != xs[1].shape[1:] or len(xs[0]) == 0 or len(xs[1]) == 0:
            return "train/test images are empty or differ in shape"
        if not all(isinstance(c, str) for c in raw["classes"]) or not isinstance(raw["source"], str):
            return "bad class names or source"
        if min(y.min().item() for y in ys) < 0 or max(y.max().item() for y in ys) >= len(raw["classes"]):
            return f"labels outside 0..{len(raw['classes']) - 1}"
    except (KeyError, TypeError, AttributeError, IndexError):
        return "missing or mistyped entries"
    return ""


def read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        problem = raw_problem(raw)
    except Exception as e:  # truncated or garbage files raise many different types
        problem = f"{type(e).__name__}: {e}".splitlines()[0]
    if problem:
        warnings.warn(f"ignoring corrupt dataset cache {path} ({problem}); rebuilding it", stacklevel=3)
        return None
    raw["source"] = f"cache {path} (built from {raw['source']})"
    return raw


def write_cache(path: Path, raw: dict) -> None:
    # Write to a temporary name and rename: a crash mid-write, or two runs
    # building the cache at once, can never leave a half-written <name>.pt.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(raw, tmp)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache is an inconvenience, not a reason to fail the run
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write dataset cache {path} ({e}); set BNREPRO_CACHE to a writable folder",
                      stacklevel=3)
