"""Datasets as tensors on the device, seeded batches, batched augmentation.

* :mod:`~bnrepro.data.datasets` -- the registry (:data:`DATASETS`), where files are found,
  :func:`load_dataset` into a :class:`TensorData`;
* :mod:`~bnrepro.data.readers` -- the on-disk formats (idx, CIFAR-10 pickles, the processed cache);
* :mod:`~bnrepro.data.batching` -- :class:`Batches` (seeded mini-batches), :func:`random_crop_flip`,
  :func:`photometric_jitter` and :func:`compose`.
"""

from .batching import Batches, compose, photometric_jitter, random_crop_flip
from .datasets import (
                       DATASET_SIZES,
                       DATASETS,
                       DEBIAN_FASHION_MNIST_DIR,
                       TensorData,
                       cache_dir,
                       data_dir,
                       load_dataset,
                       require_subset,
)
from .readers import DataNotFoundError

__all__ = ["DATASETS", "DATASET_SIZES", "DEBIAN_FASHION_MNIST_DIR", "Batches", "DataNotFoundError", "TensorData",
           "cache_dir", "compose", "data_dir", "load_dataset", "photometric_jitter", "random_crop_flip",
           "require_subset"]
