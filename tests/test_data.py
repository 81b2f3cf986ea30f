"""Tests for bnrepro.data: raw parsers, sources, cache, errors, batching, augmentation.

Tiny MNIST idx files and CIFAR-10 pickles are written under tmp_path so that
every byte the loader returns can be compared with what was written.
"""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnrepro.data import Batches, DataNotFoundError, TensorData, load_dataset, random_crop_flip
from bnrepro.data import datasets as data

REAL_DEBIAN_DIR = data.DEBIAN_FASHION_MNIST_DIR
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty data and cache folders, offline, and no Debian files: nothing leaks in from the machine."""
    monkeypatch.setenv("BNREPRO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BNREPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BNREPRO_OFFLINE", "1")
    monkeypatch.delenv("BNREPRO_DEVICE", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    return tmp_path


def write_idx(path, array, gz):
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_idx(folder, gz=True, n_train=12, n_test=6, seed=0):
    rng = np.random.RandomState(seed)
    arrays = (rng.randint(0, 256, (n_train, 28, 28)), rng.randint(0, 10, n_train),
              rng.randint(0, 256, (n_test, 28, 28)), rng.randint(0, 10, n_test))
    for stem, arr in zip(IDX, arrays):
        write_idx(folder / stem, arr, gz)
    return arrays


def make_cifar(folder, per_batch=3, n_test=4, seed=0):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True)
    batches = []
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if fname == "test_batch" else per_batch
        d = {b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8), b"labels": list(rng.randint(0, 10, n))}
        (folder / fname).write_bytes(pickle.dumps(d))
        batches.append(d)
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return batches


def as_bytes(x):
    """Invert normalize=False (pixels / 255) back to the stored bytes."""
    return (x * 255).round().to(torch.int64).numpy()


# --------------------------------------------------------------------------- loading
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_torchvision_layout_exact(env, gz):
    xtr, ytr, xte, yte = make_idx(env / "data" / "MNIST" / "raw", gz=gz)
    d = load_dataset("MNIST", normalize=False, download=False)
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (6, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert (as_bytes(d.x_train[:, 0]) == xtr).all() and (as_bytes(d.x_test[:, 0]) == xte).all()
    assert d.y_train.tolist() == ytr.tolist() and d.y_test.tolist() == yte.tolist()
    assert d.classes == [str(i) for i in range(10)]
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 1, 28)
    assert d.mean == (0.0,) and d.std == (1.0,)
    assert d.source.endswith("MNIST/raw")


@pytest.mark.parametrize("folder", ["fashion-mnist", "FashionMNIST/raw", "debian"])
def test_fashion_mnist_sources(env, monkeypatch, folder):
    target = env / "debian-dir" if folder == "debian" else env / "data" / folder
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", env / "debian-dir")
    xtr, *_ = make_idx(target, gz=folder != "FashionMNIST/raw")
    d = load_dataset("fmnist", normalize=False, download=False)
    assert (as_bytes(d.x_train[:, 0]) == xtr).all()
    assert d.classes[0] == "T-shirt/top" and d.source == str(target)


def test_cifar10_pickles_exact(env):
    batches = make_cifar(env / "data" / "cifar-10-batches-py")
    d = load_dataset("CIFAR-10", normalize=False, download=False)
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    want = np.concatenate([b[b"data"] for b in batches[:5]])
    # Byte c*1024 + h*32 + w of a row is channel c, row h, column w.
    assert (as_bytes(d.x_train).reshape(15, 3072) == want).all()
    assert as_bytes(d.x_train)[7, 2, 5, 9] == want[7, 2 * 1024 + 5 * 32 + 9]
    assert (as_bytes(d.x_test).reshape(4, 3072) == batches[5][b"data"]).all()
    assert d.y_train.tolist() == [int(v) for b in batches[:5] for v in b[b"labels"]]
    assert d.classes == [f"class{i}" for i in range(10)]  # read from batches.meta
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 3, 32)


def test_normalization_uses_train_statistics(env):
    batches = make_cifar(env / "data" / "cifar-10-batches-py", per_batch=20)
    d = load_dataset("cifar10", download=False)
    flat = d.x_train.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(flat.std(1, correction=0), torch.ones(3), atol=1e-5)
    raw = np.concatenate([b[b"data"] for b in batches[:5]]).reshape(-1, 3, 1024) / 255
    assert np.allclose(d.mean, raw.mean(axis=(0, 2))) and np.allclose(d.std, raw.std(axis=(0, 2)))
    plain = load_dataset("cifar10", normalize=False, download=False)
    restored = d.x_test * torch.tensor(d.std).view(1, 3, 1, 1) + torch.tensor(d.mean).view(1, 3, 1, 1)
    assert torch.allclose(restored, plain.x_test, atol=1e-5)


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10"])
def test_missing_data_explains_fixes(env, name):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, download=False)
    msg = str(info.value)
    assert name in msg and "BNREPRO_DATA" in msg and "download" in msg and str(env / "data") in msg
    assert ("apt-get install dataset-fashion-mnist" in msg) == (name == "fashion-mnist")


def test_offline_env_blocks_download_and_says_so(env):
    with pytest.raises(DataNotFoundError, match="BNREPRO_OFFLINE=1"):
        load_dataset("mnist")


def test_download_errors_become_data_not_found(env, monkeypatch):
    from urllib.error import URLError

    def fail(name):
        raise URLError("Name or service not known")

    monkeypatch.setattr(data, "_download", fail)
    with pytest.raises(DataNotFoundError, match="(?s)download failed: <urlopen error Name or service.*Fixes"):
        load_dataset("cifar10", download=True)


def test_download_is_used_when_allowed(env, monkeypatch):
    calls = []

    def fake_download(name):  # stands in for torchvision: leaves files in its on-disk layout
        calls.append(name)
        make_idx(data.data_dir() / "MNIST" / "raw")

    monkeypatch.setattr(data, "_download", fake_download)
    monkeypatch.delenv("BNREPRO_OFFLINE")
    assert len(load_dataset("mnist").x_train) == 12 and calls == ["mnist"]  # download=None: allowed
    with pytest.raises(DataNotFoundError):  # download=False: never, even where it would work
        load_dataset("fashion-mnist", download=False)
    assert calls == ["mnist"]


def test_incomplete_folder_names_missing_file(env):
    make_idx(env / "data" / "MNIST" / "raw")
    (env / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", download=False)


def test_corrupt_idx_file_is_named(env):
    make_idx(env / "data" / "MNIST" / "raw", gz=False)
    (env / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte is not a uint8 idx file"):
        load_dataset("mnist", download=False)


def test_bad_name_and_sizes(env):
    with pytest.raises(ValueError, match="unknown dataset name 'imagenet'.*fashion-mnist, mnist, cifar10"):
        load_dataset("imagenet")
    make_idx(env / "data" / "MNIST" / "raw")
    for bad in (0, 13, 2.5, True):
        with pytest.raises(ValueError, match="n_train"):
            load_dataset("mnist", n_train=bad, download=False)
    with pytest.raises(ValueError, match="n_test"):
        load_dataset("mnist", n_test=7, download=False)


def test_subset_takes_first_n_and_full_train_stats(env):
    xtr, ytr, _, _ = make_idx(env / "data" / "MNIST" / "raw")
    full = load_dataset("mnist", download=False)
    d = load_dataset("mnist", n_train=5, n_test=2, normalize=False, download=False)
    assert len(d.x_train) == 5 and len(d.y_test) == 2
    assert (as_bytes(d.x_train[:, 0]) == xtr[:5]).all() and d.y_train.tolist() == ytr[:5].tolist()
    assert load_dataset("mnist", n_train=5, download=False).mean == full.mean


def test_cache_is_used_on_second_load(env):
    import shutil

    make_idx(env / "data" / "MNIST" / "raw")
    first = load_dataset("mnist", download=False)
    assert (env / "cache" / "mnist.pt").is_file()
    shutil.rmtree(env / "data")  # the second load can only succeed from the cache
    second = load_dataset("mnist", download=False)
    assert second.source.startswith("cache ") and second.source.endswith("MNIST/raw)")
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)


def test_corrupt_cache_is_rebuilt(env):
    xtr, *_ = make_idx(env / "data" / "MNIST" / "raw")
    (env / "cache").mkdir()
    (env / "cache" / "mnist.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="corrupt dataset cache"):
        d = load_dataset("mnist", normalize=False, download=False)
    assert (as_bytes(d.x_train[:, 0]) == xtr).all()
    rebuilt = torch.load(env / "cache" / "mnist.pt", weights_only=True)
    assert torch.equal(rebuilt["x_train"][:, 0], torch.from_numpy(xtr.astype(np.uint8)))


def test_tensordata_to_and_repr(env):
    make_idx(env / "data" / "MNIST" / "raw")
    d = load_dataset("mnist", device="cpu", download=False).to("cpu")
    assert isinstance(d, TensorData) and d.x_train.device.type == "cpu"
    assert repr(d) == "TensorData('mnist', train=12, test=6, image=1x28x28, classes=10, device=cpu)"


@pytest.mark.skipif(not all((REAL_DEBIAN_DIR / f"{s}.gz").is_file() for s in IDX),
                    reason=f"real Fashion-MNIST not installed in {REAL_DEBIAN_DIR} "
                           "(sudo apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(env, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", REAL_DEBIAN_DIR)
    d = load_dataset("fashion-mnist", download=False)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.num_classes == 10 and sorted(d.y_train.unique().tolist()) == list(range(10))
    assert d.source == str(REAL_DEBIAN_DIR)
    assert abs(d.mean[0] - 0.2860) < 1e-3 and abs(d.std[0] - 0.3530) < 1e-3  # the well-known values


# --------------------------------------------------------------------------- batching
def toy(n=10):
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n)


def order(batches, epoch=0):
    return torch.cat([yb for _, yb in batches.epoch(epoch)]).tolist()


def test_batches_seeded_order():
    x, y = toy(50)
    assert order(Batches(x, y, 8, seed=3), 2) == order(Batches(x, y, 8, seed=3), 2)
    assert order(Batches(x, y, 8, seed=3), 2) != order(Batches(x, y, 8, seed=3), 1)
    assert order(Batches(x, y, 8, seed=3), 2) != order(Batches(x, y, 8, seed=4), 2)
    b = Batches(x, y, 8)
    assert torch.cat([yb for _, yb in b]).tolist() == order(b, 0)  # __iter__ is epoch 0


def test_batches_cover_each_sample_once_and_keep_pairs():
    x, y = toy(10)
    b = Batches(x, y, 3, seed=1)
    sizes = [len(yb) for _, yb in b.epoch(4)]
    assert len(b) == 4 and sizes == [3, 3, 3, 1]
    assert sorted(order(b, 4)) == list(range(10))
    assert all(torch.equal(xb.view(-1).long(), yb) for xb, yb in b.epoch(4))


def test_batches_drop_last_and_no_shuffle():
    x, y = toy(10)
    b = Batches(x, y, 3, drop_last=True, shuffle=False)
    assert len(b) == 3 and [len(yb) for _, yb in b] == [3, 3, 3]
    assert order(b, 5) == list(range(9))


def test_batches_validation():
    x, y = toy(10)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            Batches(x, y, bad)
    with pytest.raises(ValueError, match="batch_size.*drop_last"):
        Batches(x, y, 11, drop_last=True)
    with pytest.raises(ValueError, match="same length"):
        Batches(x, y[:5], 2)
    with pytest.raises(ValueError, match="augment"):
        Batches(x, y, 2, augment="flip")
    with pytest.raises(ValueError, match="epoch"):
        next(Batches(x, y, 2).epoch(-1))


def test_batches_apply_augment_reproducibly():
    x = torch.rand(20, 2, 6, 6)
    y = torch.arange(20)
    b = Batches(x, y, 8, augment=random_crop_flip(pad=2))
    first, again = [xb for xb, _ in b.epoch(3)], [xb for xb, _ in b.epoch(3)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert not all(torch.equal(xb, x[yb]) for xb, yb in b.epoch(3))  # it did change something
    assert all(len(xb) == len(yb) for xb, yb in Batches(x, y, 8, augment=lambda xb, g: xb + 1))


# --------------------------------------------------------------------------- augmentation
def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_crop_flip_deterministic_and_shape():
    x = torch.rand(16, 3, 8, 8)
    aug = random_crop_flip(pad=3)
    out = aug(x, gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, aug(x, gen(0))) and not torch.equal(out, aug(x, gen(1)))


def test_crop_flip_identity_when_disabled():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(random_crop_flip(pad=0, flip=False)(x, gen(0)), x)


def test_flip_only_mirrors_about_half():
    x = torch.rand(200, 2, 5, 7)  # random, so an image never equals its own mirror
    out = random_crop_flip(pad=0, flip=True)(x, gen(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == torch.flip(x, dims=[-1])).flatten(1).all(1)
    assert (same ^ mirrored).all()  # every sample is exactly one of the two
    assert 60 < mirrored.sum() < 140


def test_crop_flip_is_a_zero_padded_shift_then_maybe_mirror():
    pad, x = 2, torch.rand(40, 2, 6, 6) + 1  # + 1: zero fill cannot be mistaken for data
    out = random_crop_flip(pad=pad)(x, gen(5))
    seen = set()
    for xi, oi in zip(x, out):
        padded = F.pad(xi, (pad,) * 4)
        hits = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (0, 1)
                if torch.equal(oi, torch.flip(padded[:, dy:dy + 6, dx:dx + 6], [-1]) if f
                               else padded[:, dy:dy + 6, dx:dx + 6])]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 10  # offsets and flips really vary across the batch


def test_crop_flip_validation():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="pad"):
            random_crop_flip(pad=bad)
    with pytest.raises(ValueError, match="flip"):
        random_crop_flip(flip="yes")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop_flip()(torch.rand(3, 8, 8), gen(0))
