"""Shapes: a synthetic instruction-editing world with exact ground truth and an oracle judge.

Flat shapes on a flat background (``scene``), the seven Real-Edit instruction categories with
ground-truth targets and edit masks (``edits``), InstructPix2Pix-like noise for training data
(``corrupt``), a judge that scores any edited image by measurement (``oracle``), and the
dataset folder writer/reader (``synth``, ``folder``). See docs/shapes.md.
"""

from .corrupt import CORRUPTION_TYPES, CorruptionConfig, corrupt, damages
from .edits import CATEGORIES, Edit, EditResult, apply_edit, sample_edit
from .folder import ShapesFolderError, ShapesItem, load_split
from .oracle import OracleConfig, OracleReport, ShapesOracle, parse_meta
from .scene import COLOURS, PALETTE, SHAPES, Obj, Scene, SceneConfig, random_scene, render
from .synth import SynthConfig, Triplet, bench_scene, synthesize, train_triplet

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "CORRUPTION_TYPES",
    "PALETTE",
    "SHAPES",
    "CorruptionConfig",
    "Edit",
    "EditResult",
    "Obj",
    "OracleConfig",
    "OracleReport",
    "Scene",
    "SceneConfig",
    "ShapesFolderError",
    "ShapesItem",
    "ShapesOracle",
    "SynthConfig",
    "Triplet",
    "apply_edit",
    "bench_scene",
    "corrupt",
    "damages",
    "load_split",
    "parse_meta",
    "random_scene",
    "render",
    "sample_edit",
    "synthesize",
    "train_triplet",
]
