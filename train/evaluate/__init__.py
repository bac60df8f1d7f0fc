"""Evaluation: ``python -m train.evaluate`` on Real-Edit, Shapes-Edit or any set of edits.

Everything that measures a trained editor lives in this package; the trainer
(``python -m train``) does not depend on it. Modules, in the order a run uses them:

* :mod:`train.evaluate.benchmark_items` -- ``BenchmarkItem`` / ``Benchmark``; Real-Edit and
  folders of edits (files only)
* :mod:`train.evaluate.benchmarks` -- ``load_benchmark(spec)``: the one entry point, adding
  Shapes-Edit and store selections
* :mod:`train.evaluate.systems`   -- what is compared (``SystemSpec``; CLI parsing; sweeps)
* :mod:`train.evaluate.generate`  -- producing outputs with a pipeline (seeded per item)
* :mod:`train.evaluate.runner`    -- ``BenchmarkRun``: items, outputs and verdicts in the store
* :mod:`train.evaluate.image_metrics` -- L1, PSNR, CLIP-I / CLIP-T / CLIP direction of one image
* :mod:`train.evaluate.metrics_stage` -- those metrics for every output of a run (cached)
* :mod:`train.evaluate.tables`    -- the numbers of the paper's tables from the verdict frame
* :mod:`train.evaluate.report`    -- ``report.md`` and the CSVs of those tables
* :mod:`train.evaluate.gallery`   -- HTML and PNG galleries, systems side by side
* :mod:`train.evaluate.cli`       -- the command line and ``run_evaluation`` wiring it together
* :mod:`train.evaluate.vae_ceiling` -- ``python -m train.evaluate.vae_ceiling``: the oracle's
  verdicts on VAE round trips, a stage-0 VAE's ceiling

The bootstrap intervals and paired tests are :mod:`train.stats`. docs/evaluation.md explains
every metric and how to reproduce each table.
"""

from train.evaluate.cli import EvalConfig, run_evaluation
from train.evaluate.runner import BenchmarkRun
from train.evaluate.systems import SystemSpec, expand_sweep, parse_sweep, parse_system

__all__ = [
    "BenchmarkRun",
    "EvalConfig",
    "SystemSpec",
    "expand_sweep",
    "parse_sweep",
    "parse_system",
    "run_evaluation",
]
