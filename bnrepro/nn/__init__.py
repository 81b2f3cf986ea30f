"""Batch normalization layers: the closed-form BN, ghost BN, synchronized BN, frozen BN, conversion
and freezing.

* :mod:`~bnrepro.nn.closed_form` -- Algorithm 1 with Section 3's backward pass as an autograd Function;
* :mod:`~bnrepro.nn.functional` -- :func:`batch_norm`, with ``F.batch_norm``'s semantics;
* :mod:`~bnrepro.nn.batchnorm` -- the modules :class:`BatchNorm`, :class:`BatchNorm1d`,
  :class:`BatchNorm2d`; :func:`is_batchnorm`, the one "is this a BN layer" test;
* :mod:`~bnrepro.nn.convert` -- :func:`convert_batchnorm` and the swap every converter uses;
* :mod:`~bnrepro.nn.frozen_bn` -- :class:`FrozenBatchNorm` (fixed statistics);
* :mod:`~bnrepro.nn.ghost` -- :class:`GhostBatchNorm` (statistics over sub-batches);
* :mod:`~bnrepro.nn.sync_bn` -- :class:`SyncBatchNorm` (statistics over all processes);
* :mod:`~bnrepro.nn.freeze` -- which parameters train (:func:`train_only_bn` and its baselines).
"""

from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, decay_to_momentum, is_batchnorm, momentum_to_decay
from .closed_form import BatchNormFunction, fused_kernels_enabled, use_fused_kernels
from .convert import convert_batchnorm, is_plain_batchnorm, rebuild_batchnorm
from .freeze import (
                     BN_INITS,
                     FREEZINGS,
                     Trainable,
                     apply_freezing,
                     batchnorm_layers,
                     batchnorm_parameter_names,
                     bn_gammas,
                     init_batchnorm,
                     output_layer_names,
                     train_all,
                     train_only_bn,
                     train_only_output,
                     train_random_per_channel,
)
from .frozen_bn import FrozenBatchNorm, freeze_batchnorm
from .functional import batch_norm
from .ghost import STATS_UPDATES, GhostBatchNorm, convert_ghost_batchnorm, ghost_chunks
from .sync_bn import SyncBatchNorm, SyncBatchNormFunction, convert_sync_batchnorm, distributed_world_size

__all__ = [
    # BN and its parts
    "BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNormFunction", "batch_norm", "is_batchnorm",
    "momentum_to_decay", "decay_to_momentum", "use_fused_kernels", "fused_kernels_enabled",
    # other kinds of BN
    "FrozenBatchNorm", "GhostBatchNorm", "SyncBatchNorm", "SyncBatchNormFunction", "STATS_UPDATES",
    "ghost_chunks", "distributed_world_size",
    # converting a model's BN layers
    "convert_batchnorm", "convert_ghost_batchnorm", "convert_sync_batchnorm", "freeze_batchnorm",
    "rebuild_batchnorm", "is_plain_batchnorm",
    # which parameters train
    "BN_INITS", "FREEZINGS", "Trainable", "apply_freezing", "batchnorm_layers", "batchnorm_parameter_names",
    "bn_gammas", "init_batchnorm", "output_layer_names", "train_all", "train_only_bn", "train_only_output",
    "train_random_per_channel",
]
