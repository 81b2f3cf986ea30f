"""bnrepro: the package behind the executable book on batch normalization.

The names a user reaches for, from every tier (README, "How the code is
organised"); everything else lives in its tier's folder: ``bnrepro.core``,
``bnrepro.nn``, ``bnrepro.data``, ``bnrepro.models``, ``bnrepro.training``,
``bnrepro.distributed``, ``bnrepro.measure``, ``bnrepro.experiments``,
``bnrepro.runner``, ``bnrepro.chapters``.
"""

from .core.data_parallel import DataParallel
from .core.results import Result
from .core.version import __version__
from .data import load_dataset
from .experiments import get_experiment, list_experiments
from .measure.path_depth import expected_path_depth, path_depth_distribution
from .nn import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    GhostBatchNorm,
    SyncBatchNorm,
    convert_batchnorm,
    convert_ghost_batchnorm,
    convert_sync_batchnorm,
    train_only_bn,
)
from .runner import load_or_run, run_sweep
from .training.loop import train

__all__ = [
    "BatchNorm", "BatchNorm1d", "BatchNorm2d", "DataParallel", "GhostBatchNorm", "Result", "SyncBatchNorm",
    "__version__", "convert_batchnorm", "convert_ghost_batchnorm", "convert_sync_batchnorm",
    "expected_path_depth", "get_experiment", "list_experiments", "load_dataset", "load_or_run",
    "path_depth_distribution", "run_sweep", "train", "train_only_bn",
]
