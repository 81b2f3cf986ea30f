"""Datasets as whole tensors on the device: the registry, where the files are found, and loading.

The small image datasets used in the book fit in device memory many times
over, so (as in airbench) each one is loaded once into a few tensors and
batches are cut out by indexing (:mod:`bnrepro.data.batching`). No DataLoader
workers, no per-sample Python, and the batch order of an epoch depends only
on ``(seed, epoch)``.

Raw files are parsed by :mod:`bnrepro.data.readers` (idx for the MNISTs, the
python pickles for CIFAR-10) rather than by torchvision's dataset classes,
which insist on the md5 sums of the official files; torchvision is used only
to download. The parsed uint8 tensors are cached as ``cache_dir()/<name>.pt``
so that later loads skip decompression. Delete that file to force a rebuild.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..core.config import ConfigError
from ..core.device import get_device
from .readers import (
    CIFAR_FILES,
    IDX_FILES,
    DataNotFoundError,
    load_cifar_dir,
    load_idx_dir,
    raw_problem,
    read_cache,
    write_cache,
)

__all__ = [
    "DATASETS", "DATASET_SIZES", "require_subset", "DEBIAN_FASHION_MNIST_DIR", "data_dir", "cache_dir", "TensorData",
    "load_dataset",
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
_LAYOUT = {  # what to tell users to put in BNREPRO_DATA
    "fashion-mnist": "fashion-mnist/{" + ",".join(IDX_FILES) + "}[.gz]",
    "mnist": "MNIST/raw/{" + ",".join(IDX_FILES) + "}[.gz]",
    "cifar10": "cifar-10-batches-py/{" + ",".join(CIFAR_FILES) + ",batches.meta}",
}


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


def _local_sources(name: str) -> list[tuple[Path, object]]:
    root = data_dir()
    if name == "fashion-mnist":
        return [(root / "fashion-mnist", load_idx_dir), (root / "FashionMNIST" / "raw", load_idx_dir),
                (DEBIAN_FASHION_MNIST_DIR, load_idx_dir)]
    if name == "mnist":
        return [(root / "MNIST" / "raw", load_idx_dir), (root / "mnist", load_idx_dir)]
    return [(root / "cifar-10-batches-py", load_cifar_dir)]


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


def _try_local(name: str, looked: list[str]) -> dict | None:
    for folder, loader in _local_sources(name):
        try:
            raw = loader(folder)
        except FileNotFoundError as e:
            looked.append(f"{folder} ({f'missing {e.args[0]}' if folder.is_dir() else 'no such folder'})")
            continue
        raw.setdefault("classes", _CLASSES[name])
        raw["source"] = str(folder)
        if raw_problem(raw):
            raise DataNotFoundError(f"the {name} files in {folder} are inconsistent: {raw_problem(raw)}. "
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
    raw = read_cache(path)
    if raw is None:
        raw = _load_raw(name, bool(download), reason)
        write_cache(path, raw)
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
