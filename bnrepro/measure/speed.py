"""Speed: the BN layer's forward + backward time against PyTorch's, and ``make bench``.

* :func:`bn_speed` -- median time of one forward + backward pass in training
  mode, :class:`bnrepro.nn.batchnorm.BatchNorm` (the closed form, eager or
  with :func:`bnrepro.nn.closed_form.use_fused_kernels`) vs ``nn.BatchNorm1d/2d``.
* :func:`loop_benchmark` -- training images/s of the tensor-resident loop vs a DataLoader loop.
  Both loops train the same BN-LeNet with the same optimizer and batch size on
  Fashion-MNIST. The baseline is the usual tutorial pipeline: a Dataset that
  turns each uint8 image into a PIL image and applies torchvision's
  ``ToTensor`` + ``Normalize`` per sample, batched by a ``DataLoader``. It is
  measured with 0 and 2 worker processes and the faster one is used, so the
  ratio is not flattered by a badly configured baseline.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..core.device import describe_device, get_device, synchronize
from ..data.batching import Batches
from ..data.datasets import load_dataset
from ..models.lenet import LeNet
from ..nn.batchnorm import BatchNorm
from ..nn.closed_form import fused_kernels_enabled, use_fused_kernels

__all__ = ["bn_speed", "loop_benchmark"]


class _PILDataset(torch.utils.data.Dataset):
    """What ``torchvision.datasets.FashionMNIST(transform=...)`` does per item."""

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        from torchvision import transforms

        self.images, self.labels = images_uint8, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i, 0].numpy(), mode="L")), int(self.labels[i])


def _time_steps(model, opt, batches, steps: int, warmup: int, device) -> float:
    """Images per second over ``steps`` training steps after ``warmup`` steps."""
    it = iter(batches)
    seen, t0 = 0, None
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            t0 = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(batches)
            xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            seen += len(yb)
    synchronize(device)
    return seen / (time.perf_counter() - t0)


def loop_benchmark(batch_size: int = 256, steps: int = 100, warmup: int = 10, device=None,
                   workers: tuple[int, ...] = (0, 2), verbose: bool = True) -> dict:
    """Measure both loops in one process; returns images/s of each and the ratio."""
    device = get_device(device)
    data = load_dataset("fashion-mnist", device=device)
    raw = load_dataset("fashion-mnist", device="cpu", normalize=False)
    images_uint8 = (raw.x_train * 255).round().to(torch.uint8)

    def fresh():
        torch.manual_seed(0)
        model = LeNet("bn").to(device)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    model, opt = fresh()
    ours = _time_steps(model, opt, Batches(data.x_train, data.y_train, batch_size, seed=0, drop_last=True),
                       steps, warmup, device)
    baselines = {}
    for w in workers:
        model, opt = fresh()
        loader = torch.utils.data.DataLoader(
            _PILDataset(images_uint8, raw.y_train, data.mean[0], data.std[0]), batch_size=batch_size,
            shuffle=True, drop_last=True, num_workers=w, pin_memory=device.type == "cuda",
            persistent_workers=w > 0, generator=torch.Generator().manual_seed(0))
        baselines[w] = _time_steps(model, opt, loader, steps, warmup, device)
    best_w = max(baselines, key=baselines.get)
    out = {"device": describe_device(device), "batch_size": batch_size, "steps": steps,
           "tensor_loop_images_per_s": ours,
           "dataloader_images_per_s": {f"workers={w}": v for w, v in baselines.items()},
           "ratio": ours / baselines[best_w]}
    if verbose:
        print(f"device: {out['device']}, BN-LeNet, batch {batch_size}, {steps} timed steps after {warmup} warm-up")
        print(f"tensor-resident loop: {ours:10.0f} images/s")
        for w, v in baselines.items():
            print(f"DataLoader, {w} worker(s): {v:10.0f} images/s")
        print(f"ratio (tensor loop / best DataLoader): {out['ratio']:.2f}x")
    return out


def bn_speed(shape=(64, 32, 28, 28), repeats: int = 30, warmup: int = 5,
             device: str = "cpu", seed: int = 0, threads: int | None = None, fused: bool = False) -> dict:
    """Median time (ms) of forward + backward in training mode: ours vs PyTorch.

    Both modules see the same input and upstream gradient; the runs alternate
    so that drift (turbo, other load) hits both alike.  ``threads`` sets the
    CPU intra-op thread count for the measurement only (``None``: as is).
    ``fused`` measures ours with :func:`use_fused_kernels` (the warm-up
    includes the compilation).
    """
    if threads is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return bn_speed(shape, repeats, warmup, device, seed, fused=fused)
        finally:
            torch.set_num_threads(old)
    if fused:
        before = use_fused_kernels(True)
        try:
            return {**bn_speed(shape, repeats, max(warmup, 2), device, seed), "fused": True}
        finally:
            use_fused_kernels(before)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    dy = torch.randn(shape, generator=gen).to(device)
    ref_cls = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    mods = {"ours": BatchNorm(shape[1], device=device),
            "torch": ref_cls(shape[1], device=device)}
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def step(mod):
        x.grad = None
        mod.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        mod(x).backward(dy)
        sync()
        return time.perf_counter() - t0

    times = {k: [] for k in mods}
    for i in range(warmup + repeats):
        for k, mod in mods.items():
            t = step(mod)
            if i >= warmup:
                times[k].append(t)
    ours, ref = (statistics.median(times[k]) * 1e3 for k in ("ours", "torch"))
    return {"shape": tuple(shape), "ours_ms": ours, "torch_ms": ref, "ratio": ours / ref,
            "threads": torch.get_num_threads(), "device": str(device), "fused": fused_kernels_enabled()}
