"""Benchmarking: ``python -m train.evaluate`` on Real-Edit, Shapes-Edit or any set of edits.

Modules, in the order a run uses them:

* :mod:`train.evaluate.systems`   -- what is compared (``SystemSpec``; CLI parsing; sweeps)
* :mod:`train.evaluate.generate`  -- producing outputs with a pipeline (seeded per item)
* :mod:`train.evaluate.runner`    -- ``BenchmarkRun``: items, outputs and verdicts in the store
* :mod:`train.evaluate.metrics_stage` -- L1 / PSNR / CLIP metrics of every output (cached)
* :mod:`train.evaluate.gallery`   -- HTML and PNG galleries, systems side by side
* :mod:`train.evaluate.cli`       -- the command line and ``run_evaluation`` wiring it together

The statistics and tables live in :mod:`train.stats`, :mod:`train.report` and
:mod:`train.report_render`; the benchmarks in :mod:`train.benchmarks_data`. docs/evaluation.md
explains every metric and how to reproduce each table.
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
