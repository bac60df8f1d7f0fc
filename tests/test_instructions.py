"""One instruction check at every edge: the pipeline, the store, the judges and the trainer's
data scan reject empty and invalid-Unicode instructions with the same clear message, and the
pipeline says when the text encoder will cut an instruction."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from core.instructions import InstructionError, check_instruction

BROKEN = "make the sky \ud83d blue"  # a lone high surrogate: half an emoji


def test_check_instruction_names_the_problem():
    assert check_instruction("make it red") == "make it red"
    with pytest.raises(InstructionError, match="is empty"):
        check_instruction("   ")
    with pytest.raises(InstructionError, match="must be a string, got int"):
        check_instruction(5)
    with pytest.raises(InstructionError, match=r"unpaired surrogate U\+D83D at character 13"):
        check_instruction(BROKEN)


def test_store_and_judge_reject_a_broken_instruction(tmp_path):
    from core.judges.base import JudgeInput
    from core.store import Store
    from core.store.errors import StoreInputError

    store = Store(tmp_path / "s.db")
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(StoreInputError, match="unpaired surrogate"):
        store.add_triplet(img, img + 1, BROKEN)
    assert store.count("triplets") == 0
    with pytest.raises(ValueError, match="triplet t1: the instruction is not valid Unicode"):
        JudgeInput(BROKEN, b"x", b"y", triplet_id="t1")


def test_trainer_scan_reports_the_broken_instruction(tmp_path):
    from train.datasets import BadDataLog, EditExample, PathImage, scan

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    ex = EditExample("t9", BROKEN, PathImage(tmp_path / "a.png"), PathImage(tmp_path / "a.png"))
    log = BadDataLog("skip")
    assert list(scan([ex], log, 8, progress=False)) == []
    (item,) = log.items
    assert (item.id, item.kind) == ("t9", "bad_instruction") and "surrogate" in item.reason


def test_pipeline_rejects_broken_prompts_and_warns_before_cutting_long_ones():
    from core.pipeline import MRCInstructPix2PixPipeline
    from core.tiny import TinyConfig, build_components

    pipe = MRCInstructPix2PixPipeline(**build_components(TinyConfig(), seed=0))
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match=r"prompt\[1\] is not valid Unicode"):
        pipe(["make it red", BROKEN], image=image, num_inference_steps=1)
    with pytest.warns(UserWarning, match=r"1 instruction\(s\) of up to \d+ tokens exceed .*77"):
        pipe("make it red " * 40, image=image, num_inference_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe("make it red", image=image, num_inference_steps=1)
    assert not [w for w in caught if "-token limit" in str(w.message)]
