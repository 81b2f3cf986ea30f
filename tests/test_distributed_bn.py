"""Ghost BN, synchronized BN and per-device BN under DDP, with real processes (gloo, 2 ranks).

Independent truths: ghost BN against plain ``nn.BatchNorm2d`` run on each chunk
in turn; DDP with per-device BN against one process with ghost BN; synchronized
BN over 2 processes against one process with plain BN on the full batch.
"""

import os

import pytest
import torch
from torch import nn

from bnrepro.distributed.launch import WorkerError, launch
from bnrepro.measure.equivalence import bn_steps, reference_bn_steps
from bnrepro.nn.ghost import GhostBatchNorm, convert_ghost_batchnorm, ghost_chunks
from bnrepro.nn.sync_bn import Communication, SyncBatchNorm, convert_sync_batchnorm

TOL = dict(rtol=1e-9, atol=1e-10)  # float64 throughout


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64) * 2 + 0.5
    return x, torch.randint(0, 3, (n,), generator=g)


# --------------------------------------------------------------------------- ghost BN, one process
def test_one_ghost_bn_reachable_from_the_package():
    import bnrepro.nn
    from bnrepro.models import vgg
    from bnrepro.nn import batchnorm

    assert bnrepro.nn.GhostBatchNorm is GhostBatchNorm and issubclass(GhostBatchNorm, bnrepro.nn.BatchNorm)
    assert vgg.GhostBatchNorm is GhostBatchNorm  # the models use this one, not one of their own
    assert not hasattr(batchnorm, "GhostBatchNorm")  # the BN module does not reach up to ghost BN


def test_ghost_chunks():
    assert ghost_chunks(10, 4) == [4, 4, 2]
    assert ghost_chunks(9, 4) == [4, 5]  # a 1-sample chunk is merged
    assert ghost_chunks(3, 4) == [3]
    with pytest.raises(ValueError, match="ghost_batch_size"):
        ghost_chunks(8, 1)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_ghost_bn_equals_plain_bn_on_each_chunk(momentum):
    torch.manual_seed(0)
    x = torch.randn(10, 3, 5, 5, dtype=torch.float64) * 3 + 1
    dy = torch.randn_like(x)
    ghost = GhostBatchNorm(3, 4, momentum=momentum, dtype=torch.float64)
    plain = nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        for m in (ghost, plain):
            m.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
            m.bias.copy_(torch.tensor([0.1, 0.0, 3.0]))
    assert set(ghost.state_dict()) == set(plain.state_dict())
    for _ in range(2):  # two calls: the running statistics compound across calls too
        xg = x.clone().requires_grad_()
        yg = ghost(xg)
        yg.backward(dy)
        xp = x.clone().requires_grad_()
        yp = torch.cat([plain(c) for c in xp.split([4, 4, 2])])
        yp.backward(dy)
        torch.testing.assert_close(yg, yp, **TOL)
        torch.testing.assert_close(xg.grad, xp.grad, **TOL)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(ghost, name).grad, getattr(plain, name).grad, **TOL)
    for name, buf in plain.named_buffers():
        torch.testing.assert_close(getattr(ghost, name), buf, **TOL)
    assert int(ghost.num_batches_tracked) == 6
    ghost.eval(), plain.eval()
    torch.testing.assert_close(ghost(x), plain(x), **TOL)


def test_ghost_bn_stats_update_modes():
    torch.manual_seed(1)
    x = torch.randn(8, 3, dtype=torch.float64)
    first = GhostBatchNorm(3, 4, stats_update="first", dtype=torch.float64)
    mean = GhostBatchNorm(3, 4, stats_update="mean", dtype=torch.float64)
    first(x), mean(x)
    c0, c1 = x[:4], x[4:]
    torch.testing.assert_close(first.running_mean, 0.1 * c0.mean(0), **TOL)
    torch.testing.assert_close(first.running_var, 0.9 + 0.1 * c0.var(0), **TOL)
    torch.testing.assert_close(mean.running_var, 0.9 + 0.05 * (c0.var(0) + c1.var(0)), **TOL)
    assert int(first.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="stats_update"):
        GhostBatchNorm(3, 4, stats_update="last")


def test_convert_keeps_state_and_loads_bn_checkpoints():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4), nn.BatchNorm1d(4))
    net[1].running_mean.fill_(0.3)
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    ghost = convert_ghost_batchnorm(net, 4)
    assert isinstance(ghost[1], GhostBatchNorm) and isinstance(ghost[4], GhostBatchNorm)
    for k, v in ghost.state_dict().items():
        torch.testing.assert_close(v, ref[k])
    sync = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(2)))
    assert isinstance(sync[0], SyncBatchNorm)
    sync[0].load_state_dict(ref_bn := nn.BatchNorm2d(2).state_dict())
    assert set(sync[0].state_dict()) == set(ref_bn)


def test_sync_bn_without_process_group_is_local_bn_with_a_note():
    torch.manual_seed(2)
    x = torch.randn(6, 3, 4, 4)
    sync, plain = SyncBatchNorm(3), nn.BatchNorm2d(3)
    import bnrepro.nn.sync_bn as sb

    sb._FALLBACK_NOTED = False
    with pytest.warns(RuntimeWarning, match="not initialised"):
        y = sync(x)
    torch.testing.assert_close(y, plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


# --------------------------------------------------------------------------- real processes
def _compare(a, b, x_grad_factor=1.0, rows=slice(None), running=True):
    torch.testing.assert_close(a["out"], b["out"][rows], **TOL)
    torch.testing.assert_close(a["x_grad"], x_grad_factor * b["x_grad"][rows], **TOL)
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        torch.testing.assert_close(ga, gb, **TOL)
    if running:
        for (ma, va), (mb, vb) in zip(a["running"], b["running"], strict=True):
            torch.testing.assert_close(ma, mb, **TOL)
            torch.testing.assert_close(va, vb, **TOL)


def test_ddp_per_device_bn_is_ghost_bn_of_one_chunk_per_rank():
    x, y = _batch(8)
    steps = 3
    ranks = launch(bn_steps, 2, (x, y, "local", [4, 4], steps))
    ref = reference_bn_steps(x, y, "ghost", ghost_batch_size=4, steps=steps)
    for s in range(steps):
        for r, rows in enumerate((slice(0, 4), slice(4, 8))):
            # Input grads are those of the sum of the 2 ranks' losses = 2 x the mean loss.
            # Running statistics: DDP broadcasts rank 0's buffers, so rank 0's are the model's.
            _compare(ranks[r][s], ref[s], 2.0, rows, running=r == 0)
    # ...and they are not those of plain BN on the whole batch:
    full = reference_bn_steps(x, y, "full", steps=1)
    assert not torch.allclose(ranks[0][0]["out"], full[0]["out"][:4])


def test_sync_bn_over_two_ranks_is_full_batch_bn_with_unequal_shards():
    x, y = _batch(8, seed=3)
    steps, sizes = 3, [5, 3]
    ranks = launch(bn_steps, 2, (x, y, "sync", sizes, steps))
    ref = reference_bn_steps(x, y, "full", steps=steps)
    for s in range(steps):
        for r, rows in enumerate((slice(0, 5), slice(5, 8))):
            _compare(ranks[r][s], ref[s], 2.0, rows)


class _Counting(Communication):
    """Counts the all-reduces it carries, and carries them."""

    def __init__(self):
        self.calls = 0

    def all_reduce(self, tensor, group=None):
        self.calls += 1
        super().all_reduce(tensor, group)


class _Silent(Communication):
    """Carries nothing: each rank keeps its own sums."""

    def all_reduce(self, tensor, group=None):
        return None


def _comm_rank(rank, world, x):
    rows = slice(4 * rank, 4 * rank + 4)
    out = {}
    for name, comm in (("counting", _Counting()), ("silent", _Silent())):
        torch.manual_seed(0)
        model = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(2)).double(), comm=comm)
        xr = x[rows].clone().requires_grad_()
        y = model(xr)
        y.square().sum().backward()
        out[name] = (y.detach(), getattr(comm, "calls", None))
    return out


def test_sync_bn_communicates_through_the_layers_communication_object():
    """The hook the cost experiment uses to switch synchronization off: every all-reduce of the
    layer (one forward, one backward) goes through its ``comm``, and none through torch directly."""
    x, _ = _batch(8)
    ranks = launch(_comm_rank, 2, (x,))
    full, local = nn.BatchNorm2d(2).double(), nn.BatchNorm2d(2).double()
    for r, rows in enumerate((slice(0, 4), slice(4, 8))):
        y, calls = ranks[r]["counting"]
        assert calls == 2
        torch.testing.assert_close(y, full(x)[rows], **TOL)  # global statistics
        torch.testing.assert_close(ranks[r]["silent"][0], local(x[rows]), **TOL)  # this rank's own


def _die_or_wait(rank, world):
    import torch.distributed as dist

    if rank == 1:
        os._exit(3)  # a peer crashing mid-run
    dist.all_reduce(torch.ones(1))  # would wait for rank 1 forever without timeouts
    return "unreachable"


def test_a_dead_peer_fails_the_launch_instead_of_waiting_for_the_deadline():
    # No deadline at all: only noticing the dead rank (or the survivor's
    # failed collective) can end this launch; a hang would show as a hang.
    with pytest.raises(WorkerError, match=r"rank [01] of 2 (died with exit code 3|failed)") as err:
        launch(_die_or_wait, 2, timeout=None)
    assert "gave no result within" not in str(err.value)
