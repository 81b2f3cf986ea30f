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

__all__ = ["bn_speed", "conv_speed", "loop_benchmark"]


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


#: The conv nets of the book's cpu profile that :func:`conv_speed` measures (builders take norm="bn").
CONV_NETS = {
    "tiny VGG (bn_training, ICS)": lambda: _vgg_tiny(),
    "small VGG (width 16)": lambda: _vgg_small(),
    "LeNet (BN)": lambda: LeNet(norm="bn"),
}


def _vgg_tiny():
    from ..models.vgg import NoisyVGG

    return NoisyVGG("tiny", norm="bn", noise=False, num_classes=10, in_channels=1)


def _vgg_small():
    from ..models.vgg import vgg_bn

    return vgg_bn("small", width=16, num_classes=10, in_channels=1)


def _first_step(model: nn.Module, fn, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor, list]:
    """Loss, all parameter gradients (flat, float64) and every max-pool window's argmax of one step."""
    picks = []

    def record(mod, inputs, _out):
        picks.append(F.max_pool2d(inputs[0].detach().contiguous(), mod.kernel_size, mod.stride, mod.padding,
                                  mod.dilation, mod.ceil_mode, return_indices=True)[1])

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    loss = F.cross_entropy(fn(x), y)
    loss.backward()
    for h in handles:
        h.remove()
    grads = torch.cat([p.grad.detach().double().flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return loss.item(), grads, picks


def conv_speed(name: str = "small VGG (width 16)", batch_size: int = 128, steps: int = 20, warmup: int = 3,
               device: str = "cpu", seed: int = 0, variants=("eager", "channels_last", "compile")) -> dict:
    """Median time of one SGD training step (forward, backward, update) of a conv net, per variant,
    and how far each variant's first step is from the same step in float64.

    ``variants``: ``"eager"`` (the default), ``"channels_last"`` (model and inputs in NHWC memory
    format), ``"compile"`` (``torch.compile``, inductor; its warm-up includes the compilation).
    The variants alternate step by step so that drift in the machine's load hits them alike.
    Returns ``{"ms": {variant: ms}, "speedup": {variant: eager_ms / ms}, "grad_err": {...}
    (norm of the gradient's difference from float64's over the norm of float64's), "max_grad_err":
    {...} (largest difference over the largest entry), "pool_flips": {...} (max-pool windows whose
    argmax differs from float64's: a rounding difference at a near-tie sends that window's gradient
    to another input), "loss_diff": {...}}``; a variant that cannot run here (no C++ compiler for
    inductor) is left out, with the reason under ``"skipped"``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    models, skipped = {}, {}
    for v in variants:
        torch.manual_seed(seed)
        model = CONV_NETS[name]().to(device)
        xv = x
        if v == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            xv = x.contiguous(memory_format=torch.channels_last)
        fn = model
        if v == "compile":
            try:
                fn = torch.compile(model)
                fn(xv).sum().backward()  # compile now: an environment without a compiler fails here
                model.zero_grad(set_to_none=True)
            except Exception as err:  # noqa: BLE001 -- any backend failure means "not measurable here"
                skipped[v] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                continue
        models[v] = (model, fn, xv)
    torch.manual_seed(seed)
    ref = CONV_NETS[name]().to(device).double()
    ref_loss, ref_grads, ref_picks = _first_step(ref, ref, x.double(), y)
    first = {v: _first_step(model, fn, xv, y) for v, (model, fn, xv) in models.items()}  # identical weights
    opts = {v: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for v, (m, _, _) in models.items()}
    times = {v: [] for v in models}
    for i in range(warmup + steps):
        for v, (model, fn, xv) in models.items():
            synchronize(device)
            t0 = time.perf_counter()
            opts[v].zero_grad(set_to_none=True)
            F.cross_entropy(fn(xv), y).backward()
            opts[v].step()
            synchronize(device)
            if i >= warmup:
                times[v].append(time.perf_counter() - t0)
    ms = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    return {
        "net": name, "batch_size": batch_size, "device": str(device), "threads": torch.get_num_threads(),
        "ms": ms, "speedup": {v: ms["eager"] / t for v, t in ms.items()} if "eager" in ms else {},
        "loss_diff": {v: abs(f[0] - ref_loss) for v, f in first.items()},
        # over the whole gradient, not per tensor: a conv bias before BN has a gradient of ~0, so a
        # per-tensor relative difference would divide rounding noise by rounding noise
        "grad_err": {v: float((f[1] - ref_grads).norm() / ref_grads.norm()) for v, f in first.items()},
        "max_grad_err": {v: float((f[1] - ref_grads).abs().max() / ref_grads.abs().max()) for v, f in first.items()},
        "pool_flips": {v: sum(int((a != b).sum()) for a, b in zip(f[2], ref_picks)) for v, f in first.items()},
        "skipped": skipped,
    }
