"""Seeded mini-batches over tensors on the device, and batched augmentation.

Exported by :mod:`bnrepro.data`. Batching is
the hot path of every training step, so it is plain tensor indexing with no
DataLoader workers and no per-sample Python (airbench's habit).
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["Batches", "compose", "photometric_jitter", "random_crop_flip"]


def _epoch_seed(seed: int, epoch: int) -> int:
    # A stable hash (unlike Python's hash()) so an order is the same on every machine and run.
    digest = hashlib.sha256(f"bnrepro-batches:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Batches:
    """Seeded mini-batches over tensors that already live on the device.

    ``epoch(e)`` yields ``(xb, yb)`` in an order that depends only on
    ``(seed, e)``: a CPU :class:`torch.Generator` seeded from both draws the
    permutation (then moved to the device), so resuming a run at epoch ``e``
    reproduces the batches exactly, on any device. The same generator is handed
    to ``augment(xb, generator)``, making augmentation reproducible too.

    ``fixed_batches=True`` (with ``shuffle``) cuts the batches once, from epoch
    0's permutation, and only shuffles their order each epoch: the same images
    always meet in one batch (the "less thorough shuffling" that Ioffe &
    Szegedy's Sec. 4.2.1 removes).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, augment=None, fixed_batches: bool = False):
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if drop_last and batch_size > len(x):
            raise ValueError(f"batch_size ({batch_size}) exceeds the {len(x)} samples and drop_last=True, "
                             "so there would be no batches; lower batch_size or set drop_last=False")
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be a callable (xb, generator) -> xb or None, got {augment!r}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.drop_last, self.augment = shuffle, int(seed), drop_last, augment
        self.fixed_batches = bool(fixed_batches)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, e: int):
        """Iterator over the batches of epoch ``e`` (an int >= 0)."""
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"epoch must be an int >= 0, got {e!r}")
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, e))
        n, bs = len(self.x), self.batch_size
        order = range(len(self))
        if self.shuffle and self.fixed_batches:
            # epoch 0's permutation cuts the batches for good; each epoch draws only their order
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(self.seed, 0)))
            perm = perm.to(self.x.device)
            order = torch.randperm(len(self), generator=gen).tolist()
        else:
            perm = torch.randperm(n, generator=gen).to(self.x.device) if self.shuffle else None
        for i in order:
            if perm is None:  # contiguous slices are views: no copy at all
                xb, yb = self.x[i * bs:(i + 1) * bs], self.y[i * bs:(i + 1) * bs]
            else:
                idx = perm[i * bs:(i + 1) * bs]
                xb, yb = self.x[idx], self.y[idx]
            yield (self.augment(xb, gen) if self.augment is not None else xb), yb


class _RandomCropFlip:
    """Callable returned by :func:`random_crop_flip` (a class only for a readable repr)."""

    def __init__(self, pad: int, flip: bool):
        self.pad, self.flip = pad, flip

    def __repr__(self) -> str:
        return f"random_crop_flip(pad={self.pad}, flip={self.flip})"

    def __call__(self, xb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if xb.dim() != 4:
            raise ValueError(f"random_crop_flip expects a batch (N, C, H, W), got shape {tuple(xb.shape)}")
        if self.pad == 0 and not self.flip:
            return xb
        n, c, h, w = xb.shape
        p, gdev = self.pad, (generator.device if generator is not None else "cpu")
        # Random numbers come from the (CPU) generator, so the result is the
        # same on every device; only three small (N,) tensors cross to the device.
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gdev).to(xb.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gdev).to(xb.device)
        flipped = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(xb.device) & self.flip
        # One gather does both: row r of the output reads padded row dy + r, and
        # column k reads padded column dx + k, or dx + (w - 1 - k) when flipped.
        ar_h, ar_w = torch.arange(h, device=xb.device), torch.arange(w, device=xb.device)
        rows = dy[:, None] + ar_h
        cols = dx[:, None] + torch.where(flipped[:, None], w - 1 - ar_w, ar_w)
        padded = torch.nn.functional.pad(xb, (p, p, p, p)) if p else xb
        return padded[torch.arange(n, device=xb.device)[:, None, None, None],
                      torch.arange(c, device=xb.device)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(pad: int = 4, flip: bool = True) -> _RandomCropFlip:
    """Batched augmentation: shift by up to ``pad`` pixels (zero fill) and mirror with probability 1/2.

    Returns a callable ``(xb, generator) -> xb`` for :class:`Batches`. All
    samples are processed with a single padded gather, no Python loop.
    Zero fill equals the channel mean on normalized data.
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    if not isinstance(flip, bool):
        raise ValueError(f"flip must be True or False, got {flip!r}")
    return _RandomCropFlip(pad, flip)


class _PhotometricJitter:
    """Callable returned by :func:`photometric_jitter`."""

    def __init__(self, strength: float):
        self.strength = strength

    def __repr__(self) -> str:
        return f"photometric_jitter(strength={self.strength:g})"

    def __call__(self, xb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if xb.dim() != 4:
            raise ValueError(f"photometric_jitter expects a batch (N, C, H, W), got shape {tuple(xb.shape)}")
        if self.strength == 0:
            return xb
        n, s = len(xb), self.strength
        gdev = generator.device if generator is not None else "cpu"
        # contrast c in [1 - s/2, 1 + s/2] around each image's own mean, brightness b in [-s/2, s/2]
        u = torch.rand(2, n, 1, 1, 1, generator=generator, device=gdev).to(xb.device)
        contrast, brightness = 1 + s * (u[0] - 0.5), s * (u[1] - 0.5)
        mean = xb.mean(dim=(1, 2, 3), keepdim=True)
        return (xb - mean) * contrast + mean + brightness


def photometric_jitter(strength: float = 1.0) -> _PhotometricJitter:
    """Batched photometric distortion: per image, a random contrast in [1 - s/2, 1 + s/2] (around
    the image's mean) and a random brightness shift in [-s/2, s/2], for ``strength`` s (in units
    of the standardized pixels' standard deviation); s = 0 leaves the batch as it is."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 2:
        raise ValueError(f"strength must be a number in [0, 2], got {strength!r}")
    return _PhotometricJitter(float(strength))


class _Compose:
    def __init__(self, augments):
        self.augments = augments

    def __repr__(self) -> str:
        return "compose(" + ", ".join(map(repr, self.augments)) + ")"

    def __call__(self, xb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for augment in self.augments:
            xb = augment(xb, generator)
        return xb


def compose(*augments) -> _Compose:
    """Several batched augmentations applied in turn, sharing the batches' generator."""
    if not all(callable(a) for a in augments):
        raise ValueError("compose takes callables (xb, generator) -> xb")
    return _Compose(augments)
