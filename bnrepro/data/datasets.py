"""Datasets as whole tensors on the device, seeded batching, batched augmentation.

The small image datasets used in the book fit in device memory many times
over, so (as in airbench) each one is loaded once into a few tensors and
batches are cut out by indexing. No DataLoader workers, no per-sample Python,
and the batch order of an epoch depends only on ``(seed, epoch)``.

Raw files are parsed here (idx for the MNISTs, the python pickles for
CIFAR-10) rather than by torchvision's dataset classes, which insist on the
md5 sums of the official files; torchvision is used only to download. The
parsed uint8 tensors are cached as ``cache_dir()/<name>.pt`` so that later
loads skip decompression. Delete that file to force a rebuild.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from .batching import Batches, random_crop_flip  # re-exported: the data API
from ..core.config import ConfigError
from ..core.device import get_device

__all__ = [
    "DATASETS", "DATASET_SIZES", "require_subset", "DEBIAN_FASHION_MNIST_DIR", "DataNotFoundError", "data_dir",
    "cache_dir", "TensorData", "load_dataset", "Batches", "random_crop_flip",
]

DATASETS = ("fashion-mnist", "mnist", "cifar10")
#: (training, test) images of the official files, so configs can check n_train/n_test up front.
DATASET_SIZES = {"fashion-mnist": (60000, 10000), "mnist": (60000, 10000), "cifar10": (50000, 10000)}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar_10": "cifar10"}
#: Where the Debian package ``dataset-fashion-mnist`` installs its files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_CLASSES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_LAYOUT = {  # what to tell users to put in BNREPRO_DATA
    "fashion-mnist": "fashion-mnist/{" + ",".join(_IDX_FILES) + "}[.gz]",
    "mnist": "MNIST/raw/{" + ",".join(_IDX_FILES) + "}[.gz]",
    "cifar10": "cifar-10-batches-py/{" + ",".join(_CIFAR_FILES) + ",batches.meta}",
}


class DataNotFoundError(RuntimeError):
    """No source could provide the dataset (or a provided file is corrupt)."""


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else None


def _xdg_cache() -> Path:
    return _env_path("XDG_CACHE_HOME") or Path.home() / ".cache"


def cache_dir() -> Path:
    """``$BNREPRO_CACHE`` if set, else ``$XDG_CACHE_HOME/bnrepro`` (default ``~/.cache/bnrepro``)."""
    return _env_path("BNREPRO_CACHE") or _xdg_cache() / "bnrepro"


def data_dir() -> Path:
    """``$BNREPRO_DATA`` if set, else ``$XDG_CACHE_HOME/bnrepro/data``.

    Raw files are looked for here first, and downloads go here.
    """
    return _env_path("BNREPRO_DATA") or _xdg_cache() / "bnrepro" / "data"


def _canonical(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASETS)} "
                         f"(aliases: {', '.join(sorted(_ALIASES))})")
    return key


# --------------------------------------------------------------------------- raw parsers
def _read_idx(path: Path) -> torch.Tensor:
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


def _load_idx_dir(folder: Path) -> dict:
    paths = []
    for stem in _IDX_FILES:  # prefer the uncompressed file: no decompression needed
        found = [p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{stem}[.gz]")
        paths.append(found[0])
    xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
    return {"x_train": xtr.unsqueeze(1), "y_train": ytr.long(),  # add the channel axis: (N, 1, 28, 28)
            "x_test": xte.unsqueeze(1), "y_test": yte.long()}


def _load_cifar_dir(folder: Path) -> dict:
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

    parts = [read(fname, batch) for fname in _CIFAR_FILES]
    classes = (read("batches.meta", lambda d: [c.decode() for c in d[b"label_names"]])
               if (folder / "batches.meta").is_file() else _CLASSES["cifar10"])  # names are fixed anyway
    return {"x_train": torch.cat([p[0] for p in parts[:5]]), "y_train": torch.cat([p[1] for p in parts[:5]]),
            "x_test": parts[5][0], "y_test": parts[5][1], "classes": classes}


def _local_sources(name: str) -> list[tuple[Path, object]]:
    root = data_dir()
    if name == "fashion-mnist":
        return [(root / "fashion-mnist", _load_idx_dir), (root / "FashionMNIST" / "raw", _load_idx_dir),
                (DEBIAN_FASHION_MNIST_DIR, _load_idx_dir)]
    if name == "mnist":
        return [(root / "MNIST" / "raw", _load_idx_dir), (root / "mnist", _load_idx_dir)]
    return [(root / "cifar-10-batches-py", _load_cifar_dir)]


def _download(name: str) -> None:
    import torchvision.datasets as tvd  # imported lazily: only needed when downloading

    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[name]
    data_dir().mkdir(parents=True, exist_ok=True)
    cls(str(data_dir()), train=True, download=True)  # fetches train and test files alike


def _not_found(name: str, looked: list[str], reason: str) -> DataNotFoundError:
    fixes = []
    if name == "fashion-mnist":
        fixes.append("install the Debian package: sudo apt-get install dataset-fashion-mnist")
    fixes.append(f"set BNREPRO_DATA to a folder holding {_LAYOUT[name]} (data folder now: {data_dir()})")
    fixes.append(f"go online and let torchvision download it into {data_dir()}: "
                 f"`bnrepro data {name} --fetch`, or load_dataset({name!r}, download=True)")
    lines = [f"dataset {name!r} not found. Looked in:", *(f"  - {w}" for w in looked), reason, "Fixes:",
             *(f"  ({i}) {fix}" for i, fix in enumerate(fixes, 1))]
    return DataNotFoundError("\n".join(lines))


def _problem(raw) -> str:
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


def _try_local(name: str, looked: list[str]) -> dict | None:
    for folder, loader in _local_sources(name):
        try:
            raw = loader(folder)
        except FileNotFoundError as e:
            looked.append(f"{folder} ({f'missing {e.args[0]}' if folder.is_dir() else 'no such folder'})")
            continue
        raw.setdefault("classes", _CLASSES[name])
        raw["source"] = str(folder)
        if _problem(raw):
            raise DataNotFoundError(f"the {name} files in {folder} are inconsistent: {_problem(raw)}. "
                                    "Delete or replace them.")
        return raw
    return None


def _load_raw(name: str, download: bool, offline_reason: str) -> dict:
    """Uint8 images (N,C,H,W), int64 labels, classes and source, from the first source that works."""
    looked: list[str] = []
    raw = _try_local(name, looked)
    if raw is not None:
        return raw
    if not download:
        raise _not_found(name, looked, offline_reason)
    looked.append(f"torchvision download into {data_dir()}")
    try:
        _download(name)
    except Exception as e:  # network failures arrive as URLError, RuntimeError, OSError, ...
        detail = " ".join(str(e).split()) or type(e).__name__  # one line; torchvision's are multi-line
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise _not_found(name, looked, f"The download failed: {detail}") from None
    raw = _try_local(name, [])
    if raw is None:
        raise _not_found(name, looked, "The download finished but the expected files are not there.")
    return raw


# --------------------------------------------------------------------------- processed cache
def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        problem = _problem(raw)
    except Exception as e:  # truncated or garbage files raise many different types
        problem = f"{type(e).__name__}: {e}".splitlines()[0]
    if problem:
        warnings.warn(f"ignoring corrupt dataset cache {path} ({problem}); rebuilding it", stacklevel=3)
        return None
    raw["source"] = f"cache {path} (built from {raw['source']})"
    return raw


def _write_cache(path: Path, raw: dict) -> None:
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


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of uint8 images, on the [0, 1] scale.

    A 256-bin histogram per channel is exact and needs no float copy of the
    whole training set (which for CIFAR-10 would be 600 MB in float64).
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        mean = (counts * values).sum() / counts.sum()
        var = (counts * (values - mean) ** 2).sum() / counts.sum()
        means.append(float(mean))
        stds.append(float(var.sqrt()) or 1.0)  # a constant channel: avoid dividing by zero
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------- public API
@dataclasses.dataclass(repr=False)
class TensorData:
    """A whole dataset as tensors on one device.

    ``x_*`` are float32 ``(N, C, H, W)``: normalized per channel with the
    training set's ``mean``/``std`` (given on the [0, 1] pixel scale), or, if
    loaded with ``normalize=False``, pixels scaled to [0, 1] with ``mean=0``
    and ``std=1``. So ``x * std + mean`` always recovers [0, 1] pixels.
    ``y_*`` are int64 class indices into ``classes``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        """Height (= width; all supported datasets have square images)."""
        return self.x_train.shape[2]

    def to(self, device: str | torch.device | None) -> TensorData:
        """A copy with all tensors on ``device`` (resolved by :func:`bnrepro.core.device.get_device`)."""
        dev = get_device(device)
        return dataclasses.replace(self, **{k: getattr(self, k).to(dev)
                                            for k in ("x_train", "y_train", "x_test", "y_test")})

    def __repr__(self) -> str:
        c, h, w = self.x_train.shape[1:]
        return (f"TensorData({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"image={c}x{h}x{w}, classes={self.num_classes}, device={self.x_train.device})")


def require_subset(dataset: str, n_train: int | None, n_test: int | None) -> None:
    """Raise :class:`~bnrepro.core.config.ConfigError` naming the field if ``n_train`` or ``n_test``
    asks for more images than ``dataset`` has (``None`` means all); for configs' ``validate``."""
    sizes = DATASET_SIZES.get(dataset)
    if sizes is None:
        return  # an unknown name is the dataset field's own error
    for field, n, size, part in (("n_train", n_train, sizes[0], "training"), ("n_test", n_test, sizes[1], "test")):
        if n is not None and n > size:
            raise ConfigError(f"{field}={n!r}: {dataset} has {size} {part} images; "
                              f"use at most {size}, or None for all of them")


def _check_count(field: str, n, size: int) -> int:
    if n is None:
        return size
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= size:
        raise ValueError(f"{field} must be an int with 1 <= {field} <= {size} (the full size), got {n!r}")
    return n


def load_dataset(name: str, *, device: str | torch.device | None = None, n_train: int | None = None,
                 n_test: int | None = None, normalize: bool = True,
                 download: bool | None = None) -> TensorData:
    """Load a dataset as float tensors on ``device``.

    Sources are tried in order: the processed cache ``cache_dir()/<name>.pt``;
    raw files under ``data_dir()`` (``fashion-mnist/`` or ``FashionMNIST/raw/``,
    ``MNIST/raw/`` or ``mnist/``, ``cifar-10-batches-py/``); for Fashion-MNIST
    the Debian package's folder; finally a torchvision download into
    ``data_dir()``, if ``download`` allows it (``None``: unless
    ``BNREPRO_OFFLINE=1``; ``False``: never).

    ``n_train``/``n_test`` keep the first n samples, for quick smoke runs.
    Normalization statistics always come from the *full* training set, so a
    smoke run sees exactly the inputs a full run would.

    Raises:
        ValueError: unknown name or bad ``n_train``/``n_test``/device.
        DataNotFoundError: no source works; the message lists the fixes.
    """
    name = _canonical(name)
    dev = get_device(device)
    if download is None:
        offline = os.environ.get("BNREPRO_OFFLINE", "").strip() == "1"
        download, reason = not offline, "Downloading is disabled because BNREPRO_OFFLINE=1."
    else:
        reason = "Downloading is disabled (download=False)."
    path = cache_dir() / f"{name}.pt"
    raw = _read_cache(path)
    if raw is None:
        raw = _load_raw(name, bool(download), reason)
        _write_cache(path, raw)
    n_train = _check_count("n_train", n_train, len(raw["x_train"]))
    n_test = _check_count("n_test", n_test, len(raw["x_test"]))

    if normalize:
        mean, std = _channel_stats(raw["x_train"])
    else:
        mean, std = (0.0,) * raw["x_train"].shape[1], (1.0,) * raw["x_train"].shape[1]
    m = torch.tensor(mean, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(std, device=dev).view(1, -1, 1, 1)

    def prep(x: torch.Tensor) -> torch.Tensor:
        # Move uint8 first (4x less to transfer), then convert on the device.
        return x.to(dev).float().div_(255).sub_(m).div_(s)

    return TensorData(name, prep(raw["x_train"][:n_train]), raw["y_train"][:n_train].to(dev),
                      prep(raw["x_test"][:n_test]), raw["y_test"][:n_test].to(dev),
                      list(raw["classes"]), raw["source"], mean, std)
