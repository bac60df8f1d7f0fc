"""RewardEdit-20K import/export, corrected-label export in every format, and the stats helpers."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.rewards import Rewards
from core.store import Store
from data.interop import corrected_labels, export_labels, import_rewardedit
from data.stats import (
    agreement,
    agreement_markdown,
    cohen_kappa,
    label_frame,
    plot_score_distribution,
    plot_word_clouds,
    quadratic_weighted_kappa,
)
from tests._judge_fakes import png


def jpg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png(seed, 24))).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def rewardedit(tmp_path):
    """A small RewardEdit-20K file with both image layouts and every kind of problem."""
    images = tmp_path / "images"
    # InstructPix2Pix layout: <prompt folder>/<seed>_0.jpg, _1.jpg, prompt.json
    for folder, seed, edit in (("p1", "111", "make it snowy"), ("p2", "222", "add a hat")):
        (images / folder).mkdir(parents=True)
        (images / folder / f"{seed}_0.jpg").write_bytes(jpg(int(seed)))
        (images / folder / f"{seed}_1.jpg").write_bytes(jpg(int(seed) + 1))
        (images / folder / "prompt.json").write_text(json.dumps({"input": "x", "edit": edit}))
    # folder layout: <id>/original.png, edited.png, instruction from --instructions
    (images / "t3").mkdir()
    (images / "t3" / "original.png").write_bytes(png(3))
    (images / "t3" / "edited.png").write_bytes(png(4))
    # a truncated image
    (images / "t4").mkdir()
    (images / "t4" / "original.png").write_bytes(png(5))
    (images / "t4" / "edited.png").write_bytes(png(6)[:50])
    doc = {
        "p1/111": [{"Score": 5, "Negative Prompt": ""}, {"Score": 3, "Negative Prompt": "sky changed"},
                   {"Score": 4.5, "Negative Prompt": "slight blur"}],
        "p2/222": [{"Score": 1, "Negative Prompt": "no hat was added"}, {"Score": 5, "Negative Prompt": ""},
                   {"Score": 5, "Negative Prompt": ""}],
        "t3": [{"Score": 2, "Negative Prompt": "poorly executed"}, {"Score": 4, "Negative Prompt": ""},
               {"Score": 3, "Negative Prompt": "unnatural lighting"}],
        "t4": [{"Score": 5, "Negative Prompt": ""}] * 3,
        "missing": [{"Score": 5, "Negative Prompt": ""}] * 3,
        "bad": [{"Score": 9, "Negative Prompt": ""}] * 3,
    }  # fmt: skip
    path = tmp_path / "rewardedit.json"
    path.write_text(json.dumps(doc))
    return path, images, doc


def test_import_reports_every_skip_and_roundtrips(tmp_path, rewardedit):
    path, images, doc = rewardedit
    store = Store(tmp_path / "db" / "s.db")
    instructions = {"t3": "make it red", "t4": "make it blue"}
    report = import_rewardedit(store, path, images, instructions=instructions, progress=False)
    assert report.imported == 3 and report.new == 3 and report.labels == 3
    skipped = dict(report.skipped)
    assert set(skipped) == {"t4", "missing", "bad"}
    assert "truncated" in skipped["t4"] or "corrupt" in skipped["t4"]
    assert "no image pair" in skipped["missing"] and "[0, 5]" in skipped["bad"]
    rows = {r["external_id"]: r for r in store.list_triplets()}
    assert (
        rows["p1/111"]["instruction"] == "make it snowy"
        and rows["t3"]["instruction"] == "make it red"
    )
    # importing again changes nothing (content-addressed triplets, idempotent label keys)
    again = import_rewardedit(store, path, images, instructions=instructions, progress=False)
    assert again.imported == 3 and store.count("triplets") == 3 and store.count("annotations") == 3
    assert again.new == 0 and "(0 new, 3 already in the store)" in again.text()
    out = tmp_path / "out.json"
    assert export_labels(store, out, "rewardedit") == 3
    exported = json.loads(out.read_text())
    assert exported == {k: doc[k] for k in ("p1/111", "p2/222", "t3")}  # exact round trip


def test_human_correction_wins_with_provenance(tmp_path, rewardedit):
    path, images, _ = rewardedit
    store = Store(tmp_path / "s.db")
    import_rewardedit(store, path, images, instructions={"t3": "make it red"}, progress=False)
    tid = next(r["id"] for r in store.list_triplets() if r["external_id"] == "t3")
    label = store.get_label(tid)
    fixed = Rewards.from_scores(
        [0, 4, 3], ["the object was not turned red", "", "unnatural lighting"]
    )
    store.update_label(tid, fixed, user="alice", expected_version=label.version, status="fixed")
    recs = {r["external_id"]: r for r in corrected_labels(store)}
    assert recs["t3"]["following"] == 0 and recs["t3"]["origin"] == "human"
    assert recs["t3"]["review_status"] == "fixed" and recs["t3"]["reviewed_by"] == "alice"
    assert recs["p1/111"]["origin"] == "judge" and recs["p1/111"]["judge_model"] == "gpt-4o"
    assert recs["p1/111"]["prompt_version"] == "rewardedit-20k"
    assert [r["external_id"] for r in corrected_labels(store, reviewed_only=True)] == ["t3"]

    for fmt, name in (("json", "l.json"), ("csv", "l.csv"), ("parquet", "l.parquet")):
        assert export_labels(store, tmp_path / name, fmt) == 3
    csv = pd.read_csv(tmp_path / "l.csv", keep_default_na=False)
    pq = pd.read_parquet(tmp_path / "l.parquet")
    js = pd.DataFrame(json.loads((tmp_path / "l.json").read_text()))
    for frame in (csv, pq, js):
        row = frame[frame.external_id == "t3"].iloc[0]
        assert row.following == 0 and row.following_text == "the object was not turned red"
        assert row.origin == "human"

    import datasets

    export_labels(store, tmp_path / "hf", "hf")
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == 3 and set(ds.column_names) >= {"following", "origin", "original_image"}
    rec = ds[[r["external_id"] for r in ds].index("t3")]
    assert rec["following"] == 0 and rec["edited_image"].size == (32, 32)


def test_bad_inputs_are_clear_errors(tmp_path, rewardedit):
    path, images, _ = rewardedit
    store = Store(tmp_path / "s.db")
    with pytest.raises(ValueError, match="does not exist"):
        import_rewardedit(store, path, tmp_path / "nope", progress=False)
    bad = tmp_path / "instr.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        import_rewardedit(store, path, images, instructions=bad, progress=False)
    with pytest.raises(ValueError, match="format"):
        export_labels(store, tmp_path / "x", "xlsx")
    assert store.count("triplets") == 0


# -- stats -----------------------------------------------------------------------------------


def test_quadratic_weighted_kappa_matches_the_moment_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 6, 200).astype(float)
        b = np.clip(a + rng.integers(-2, 3, 200), 0, 5)
        # QWK == 2 cov / (var a + var b + (mean a - mean b)^2) with population moments
        cov = np.mean((a - a.mean()) * (b - b.mean()))
        want = 2 * cov / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)
        assert quadratic_weighted_kappa(a, b) == pytest.approx(want, abs=1e-12)
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]) == 1.0
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]) == pytest.approx(-1.0)
    assert math.isnan(quadratic_weighted_kappa([5, 5], [5, 5]))  # undefined, not guessed


def test_one_cohen_kappa_serves_plain_and_weighted():
    assert cohen_kappa([0, 1, 2], [0, 2, 2], weights="linear", labels=range(3)) == pytest.approx(
        2 / 3
    )  # worked by hand: 1 - (1/6) / (1/2)
    a, b = [0, 1, 2, 3, 4, 5, 2], [0, 2, 2, 3, 5, 5, 1]
    assert cohen_kappa(a, b, weights="quadratic", labels=range(6)) == quadratic_weighted_kappa(a, b)
    assert cohen_kappa(["yes", "no", "yes", "no"], ["yes", "no", "no", "no"]) == pytest.approx(0.5)
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match="one label per item"):
        cohen_kappa([1], [1, 2])
    with pytest.raises(ValueError, match=r"labels \[7\] are not in the given labels"):
        cohen_kappa([7], [1], labels=range(6))
    with pytest.raises(ValueError, match="weights must be"):
        cohen_kappa([1], [1], weights="cubic")


def test_agreement_metrics():
    got = agreement([5, 4.4, 3, 0, 2.5], [5, 4, 1, 0.4, 2])
    assert got["n"] == 5
    assert got["mae"] == pytest.approx((0 + 0.4 + 2 + 0.4 + 0.5) / 5)
    # rounded half up: [5,4,3,0,3] vs [5,4,1,0,2]
    assert got["exact"] == pytest.approx(3 / 5) and got["within1"] == pytest.approx(4 / 5)
    md = agreement_markdown(
        [
            {
                "judge_model": "m",
                "prompt_version": "v1",
                "n": 5,
                **{p: got for p in ("following", "preserving", "quality")},
            }
        ]
    )
    assert md.count("\n") == 5 and "| m | v1 | quality | 5 |" in md
    with pytest.raises(ValueError):
        agreement([1, 2], [1])


def test_plots_are_written(tmp_path, rewardedit):
    path, images, _ = rewardedit
    store = Store(tmp_path / "s.db")
    import_rewardedit(store, path, images, instructions={"t3": "make it red"}, progress=False)
    frame = label_frame(store)
    assert len(frame) == 3 and sorted(frame.following) == [1, 2, 5]
    for png_path in (
        plot_score_distribution(frame, tmp_path / "d.png"),
        plot_word_clouds(frame, tmp_path / "w.png"),
    ):
        img = Image.open(png_path)
        assert img.size[0] > 800 and np.asarray(img.convert("L")).std() > 5  # not blank
    judge = label_frame(store, judge_model="gpt-4o", kind="judge")
    assert len(judge) == 3


# -- Shapes folders ----------------------------------------------------------------------------


def test_import_shapes_folder_and_synth_db_share_one_record_layout(tmp_path):
    """``import_shapes_folder`` (triplets only) and ``python -m data synth --db`` (triplets and
    oracle labels) write the same triplets; importing twice adds nothing."""
    from data.interop import import_shapes_folder
    from data.shapes import SynthConfig, load_split, synthesize
    from data.shapes.to_store import load_into_store

    folder = tmp_path / "shapes"
    synthesize(folder, SynthConfig(train=3, bench=1, size=32), workers=1, progress=False)
    store = Store(tmp_path / "a.db")
    assert import_shapes_folder(store, folder, progress=False) == 10  # 3 train + 7 bench
    assert import_shapes_folder(store, folder, progress=False) == 10
    assert store.count("triplets") == 10 and store.count("annotations") == 0
    got = load_into_store(folder, tmp_path / "b.db", progress=False)
    assert got == {"triplets": 10, "oracle_labels": 3}
    other = Store(tmp_path / "b.db")
    assert [t["id"] for t in store.list_triplets()] == [t["id"] for t in other.list_triplets()]
    train = {it.id: it for it in load_split(folder, "train")}
    for t in store.list_triplets(split="train"):
        item = train[t["external_id"]]
        assert t["source"] == "shapes" and t["instruction"] == item.instruction
        assert t["meta"].get("corruptions", []) == list(item.corruptions) and "scene" in t["meta"]
    bench = store.list_triplets(split="bench")
    assert len(bench) == 7 and all(t["edited"] is None and t["target"] for t in bench)
    assert load_into_store(folder, tmp_path / "a.db", progress=False)["oracle_labels"] == 3
    assert store.count("triplets") == 10 and store.count("annotations") == 3
