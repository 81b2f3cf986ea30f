"""The runner: runs experiments into the results store.

``load_or_run`` (:mod:`.run`) loads a stored result or runs and stores it; :mod:`.sweep` runs
many configs (resumable, on a pool or SLURM); :mod:`.parallel` runs one over several processes.
It sits above the experiments, whose registry it reaches, and below the chapters, which call it.
"""

from .parallel import require_data_parallel, run_parallel, run_torchrun
from .run import load_groups, load_or_run, load_summary
from .sweep import run_sweep

__all__ = ["load_groups", "load_or_run", "load_summary", "run_sweep", "run_parallel", "run_torchrun",
           "require_data_parallel"]
