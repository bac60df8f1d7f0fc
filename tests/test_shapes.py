"""Shapes domain: generator, edits, noise injection, oracle judge, dataset folder and CLI."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.rewards import PERSPECTIVES, Rewards
from data.cli import main as data_main
from data.shapes import (
    CATEGORIES,
    CORRUPTION_TYPES,
    CorruptionConfig,
    SceneConfig,
    ShapesFolderError,
    ShapesOracle,
    SynthConfig,
    apply_edit,
    corrupt,
    damages,
    load_split,
    random_scene,
    render,
    sample_edit,
    synthesize,
    train_triplet,
)
from data.shapes.corrupt import FOLLOWING_TYPES, PRESERVING_TYPES, QUALITY_TYPES
from data.shapes.edits import Edit
from data.shapes.scene import PALETTE_ARRAY, Obj, Scene, object_mask, rgb

SCFG = SceneConfig(size=64)
EXACT = ShapesOracle(fast_exact=False)  # always measure, never take the exact-target shortcut
CLEAN = {"following": None, "preserving": None, "quality": None}
GROUP = {
    **dict.fromkeys(FOLLOWING_TYPES, "following"),
    **dict.fromkeys(PRESERVING_TYPES, "preserving"),
    **dict.fromkeys(QUALITY_TYPES, "quality"),
}


def _meta(scene, edit):
    return {"size": scene.size, "scene": scene.to_dict(), "edit": edit.to_dict()}


def _triplet(seed: int, category: str | None = None, cfg: SceneConfig = SCFG):
    rng = np.random.default_rng(seed)
    while True:
        scene = random_scene(rng, cfg)
        cat = category or CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        edit = sample_edit(scene, cat, rng, cfg)
        if edit is not None:
            return scene, edit, rng


# -- the world ------------------------------------------------------------------------------


def test_palette_and_scenes_are_well_formed():
    assert len(PALETTE_ARRAY) >= 8
    d = np.linalg.norm(PALETTE_ARRAY[:, None] - PALETTE_ARRAY[None], axis=-1)
    assert d[~np.eye(len(d), dtype=bool)].min() >= 95  # colours never blur into each other
    for seed in range(40):
        scene = random_scene(np.random.default_rng(seed), SCFG)
        assert 1 <= len(scene.objects) <= 4
        names = [o.name for o in scene.objects]
        assert len(set(names)) == len(names)
        masks = [object_mask(o, 64) for o in scene.objects]
        assert all(m.sum() > 20 for m in masks)
        total = np.sum(masks, axis=0)
        assert total.max() <= 1  # no overlap
        img = render(scene)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        # hard edges: every pixel is exactly the background or an object colour
        allowed = {tuple(PALETTE_ARRAY[i].astype(int)) for i in range(len(PALETTE_ARRAY))}
        assert {tuple(p) for p in img.reshape(-1, 3)} <= allowed


@pytest.mark.parametrize("size", [32, 128, 256])
def test_other_sizes_render(size):
    cfg = SceneConfig(size=size)
    scene, edit, _ = _triplet(3, "add", cfg)
    res = apply_edit(scene, edit)
    assert res.target.shape == (size, size, 3) and res.mask.shape == (size, size)


@pytest.mark.parametrize("bad", [16, 31, 257, 64.0, "64"])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="size"):
        SceneConfig(size=bad)


def test_bad_scene_descriptions_are_refused():
    with pytest.raises(ValueError, match="unknown shape"):
        Obj("hexagon", "red", 10, 10, 5)
    with pytest.raises(ValueError, match="unknown colour"):
        Obj("circle", "mauve", 10, 10, 5)
    with pytest.raises(ValueError, match="malformed scene"):
        Scene.from_dict({"size": 64, "background": "white"})


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_gives_a_valid_target_and_mask(category):
    for seed in range(12):
        scene, edit, _ = _triplet(1000 + seed, category)
        assert edit.category == category and edit.instruction
        original = render(scene)
        res = apply_edit(scene, edit)
        assert res.mask.dtype == bool and res.mask.any()
        changed = np.any(res.target != original, axis=-1)
        assert changed.any(), edit
        if category in ("global", "style"):
            assert res.mask.all()
        else:  # nothing outside the edit region changes
            assert not (changed & ~res.mask).any(), edit
        if category in ("local", "remove", "add", "texture"):
            assert (changed & res.mask).sum() >= 0.3 * res.mask.sum()


def test_instructions_have_several_phrasings_per_category():
    for category in CATEGORIES:
        firsts = {_triplet(seed, category)[1].instruction.split()[0] for seed in range(60)}
        assert len(firsts) >= 3, (category, firsts)


# -- the oracle -----------------------------------------------------------------------------


def test_oracle_gives_clean_triplets_full_marks():
    full, n = 0, 280
    for seed in range(n):
        scene, edit, _ = _triplet(seed, CATEGORIES[seed % 7])
        res = apply_edit(scene, edit)
        r = EXACT.annotate(
            render(scene), edit.instruction, res.target, res.target, res.mask, _meta(scene, edit)
        )
        full += r.scores == (5.0, 5.0, 5.0) and r.texts == ("", "", "")
    assert full >= 0.99 * n


def test_exact_shortcut_agrees_with_the_measurement():
    fast = ShapesOracle()
    for seed in range(30):
        scene, edit, _ = _triplet(500 + seed)
        res = apply_edit(scene, edit)
        args = (
            render(scene),
            edit.instruction,
            res.target,
            res.target,
            res.mask,
            _meta(scene, edit),
        )
        assert fast.annotate(*args) == EXACT.annotate(*args) == Rewards.best()


def _corrupted_samples(kind: str, n: int, cfg: SceneConfig = SCFG):
    """n triplets whose edited image carries exactly one corruption, of type ``kind``."""
    out, seed = [], 0
    while len(out) < n:
        seed += 1
        scene, edit, rng = _triplet(zlib.crc32(kind.encode()) + seed, cfg=cfg)
        try:
            c = corrupt(
                scene, edit, rng, CorruptionConfig(), cfg, force={**CLEAN, GROUP[kind]: kind}
            )
        except ValueError:
            continue  # this type does not apply to this triplet
        assert [r["type"] for r in c.corruptions] == [kind]
        out.append((scene, edit, c.edited))
    return out


@pytest.mark.parametrize("kind", CORRUPTION_TYPES)
def test_each_corruption_lowers_the_perspective_it_damages(kind):
    n = 60
    lowered, others_ok = 0, 0
    for scene, edit, edited in _corrupted_samples(kind, n):
        res = apply_edit(scene, edit)
        r = EXACT.annotate(
            render(scene), edit.instruction, edited, res.target, res.mask, _meta(scene, edit)
        )
        hit = damages(kind, edit.category)
        lowered += all(r[p].score < 5 and r[p].text for p in hit)
        others_ok += all(r[p].score >= 4 for p in PERSPECTIVES if p not in hit)
    assert lowered >= 0.95 * n, f"{kind}: lowered in {lowered}/{n}"
    assert others_ok >= 0.95 * n, f"{kind}: other perspectives >= 4 in {others_ok}/{n}"


def test_oracle_works_at_32_px():
    cfg = SceneConfig(size=32)
    full = 0
    for seed in range(70):
        scene, edit, _ = _triplet(seed, CATEGORIES[seed % 7], cfg)
        res = apply_edit(scene, edit)
        r = EXACT.annotate(render(scene), "", res.target, res.target, res.mask, _meta(scene, edit))
        full += r.scores == (5.0, 5.0, 5.0)
    assert full >= 69
    lowered = others_ok = total = 0
    for kind in CORRUPTION_TYPES:
        for scene, edit, edited in _corrupted_samples(kind, 12, cfg):
            res = apply_edit(scene, edit)
            r = EXACT.annotate(render(scene), "", edited, res.target, res.mask, _meta(scene, edit))
            hit = damages(kind, edit.category)
            lowered += all(r[p].score < 5 for p in hit)
            others_ok += all(r[p].score >= 4 for p in PERSPECTIVES if p not in hit)
            total += 1
    assert lowered >= 0.95 * total and others_ok >= 0.95 * total


def test_failure_texts_name_objects_colours_and_regions():
    scene = Scene(64, "white", (Obj("circle", "red", 16, 16, 8), Obj("square", "green", 46, 44, 8)))
    edit = Edit("local", {"object": 0, "colour": "blue"}, "make the red circle blue")
    original, meta = render(scene), _meta(scene, edit)
    res = apply_edit(scene, edit)
    r = EXACT.annotate(original, edit.instruction, original, res.target, res.mask, meta)
    assert r.following.score == 0 and r.following.text == "the red circle was not turned blue"
    wrong = render(scene.replace_object(0, scene.objects[0].replace(colour="yellow")))
    r = EXACT.annotate(original, edit.instruction, wrong, res.target, res.mask, meta)
    assert "turned yellow instead of blue" in r.following.text
    changed = res.target.copy()
    changed[object_mask(scene.objects[1], 64)] = rgb("purple")
    r = EXACT.annotate(original, edit.instruction, changed, res.target, res.mask, meta)
    assert (
        r.following.score == 5
        and "the green square changed colour (it looks purple now)" in r.preserving.text
    )
    noisy = res.target.astype(float)
    noisy[2:12, 44:58] += np.random.default_rng(0).normal(0, 60, (10, 14, 3))
    r = EXACT.annotate(
        original,
        edit.instruction,
        np.clip(noisy, 0, 255).astype(np.uint8),
        res.target,
        res.mask,
        meta,
    )
    assert r.quality.score < 5 and "noise blotches in the top-right" in r.quality.text
    tinted = res.target.copy()
    tinted[np.all(tinted == 245, -1)] = (245, 200, 170)
    r = EXACT.annotate(original, edit.instruction, tinted, res.target, res.mask, meta)
    assert r.preserving.score < 4 and "the white background changed colour" in r.preserving.text


def test_evaluate_gives_yes_no_and_score_per_perspective():
    scene, edit, rng = _triplet(7, "remove")
    res, meta, original = apply_edit(scene, edit), _meta(scene, edit), render(scene)
    good = EXACT.evaluate(original, edit.instruction, res.target, res.target, res.mask, meta)
    assert good == {p: (True, 5.0) for p in PERSPECTIVES}
    bad = EXACT.evaluate(original, edit.instruction, original, res.target, res.mask, meta)
    assert bad["following"] == (False, 0.0) and bad["preserving"][0] and bad["quality"][0]


def test_oracle_takes_pil_images_renders_missing_ground_truth_and_checks_inputs():
    scene, edit, _ = _triplet(11, "background")
    res, meta = apply_edit(scene, edit), _meta(scene, edit)
    pil = Image.fromarray(res.target).convert("RGBA")
    assert (
        EXACT.annotate(Image.fromarray(render(scene)), edit.instruction, pil, meta=meta)
        == Rewards.best()
    )
    with pytest.raises(ValueError, match="meta"):
        EXACT.annotate(render(scene), edit.instruction, res.target)
    with pytest.raises(ValueError, match="the original image is 32x32"):
        EXACT.annotate(render(scene)[:32, :32], edit.instruction, res.target, meta=meta)
    with pytest.raises(ValueError, match="too small"):
        EXACT.annotate(render(scene), edit.instruction, res.target[:4, :4], meta=meta)


def test_low_resolution_model_outputs_are_judged_at_their_resolution():
    scores = []
    for seed in range(21):
        scene, edit, _ = _triplet(300 + seed, CATEGORIES[seed % 7])
        res = apply_edit(scene, edit)
        small = np.asarray(Image.fromarray(res.target).resize((32, 32), Image.Resampling.BILINEAR))
        scores.append(
            EXACT.annotate(
                render(scene), "", small, res.target, res.mask, _meta(scene, edit)
            ).scores
        )
    s = np.array(scores)
    assert (s >= 4).mean() >= 0.95  # a faithful 32-px output is not punished for being 32 px
    blurred = []
    for seed in range(7):
        scene, edit, _ = _triplet(400 + seed, "local")
        res = apply_edit(scene, edit)
        small = Image.fromarray(res.target).resize((32, 32), Image.Resampling.BILINEAR)
        up = np.asarray(small.resize((64, 64), Image.Resampling.BILINEAR))  # blurry at 64 px
        blurred.append(
            EXACT.annotate(
                render(scene), "", up, res.target, res.mask, _meta(scene, edit)
            ).quality.score
        )
    assert max(blurred) < 4


# -- noisy training data --------------------------------------------------------------------


def test_default_training_noise_leaves_most_triplets_imperfect():
    cfg = SynthConfig(train=150)
    oracle = ShapesOracle()
    ts = [train_triplet(i, cfg, oracle) for i in range(150)]
    imperfect = np.mean([min(t.rewards.scores) < 5 for t in ts])
    assert imperfect > 0.5
    clean = [t for t in ts if not t.corruptions]
    assert clean and all(t.rewards == Rewards.best() for t in clean)
    for t in ts:
        if not t.corruptions:
            assert np.array_equal(t.edited, t.target)


def test_corruption_rates_are_configurable_and_validated():
    cfg = SynthConfig(train=40, corruption=CorruptionConfig(0.0, 0.0, 0.0))
    assert all(not train_triplet(i, cfg).corruptions for i in range(40))
    with pytest.raises(ValueError, match="probability"):
        CorruptionConfig(p_following=1.5)
    with pytest.raises(ValueError, match="unknown corruption"):
        CorruptionConfig(weights={"sparkles": 1.0})


# -- determinism, folders and the CLI -------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "info.json"
    }


def test_generator_is_deterministic_and_independent_of_workers(tmp_path):
    cfg = SynthConfig(train=70, bench=2, seed=5)
    synthesize(tmp_path / "a", cfg, workers=1, progress=False)
    synthesize(tmp_path / "b", cfg, workers=2, progress=False)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) == 70 * 4 + 2 + 2 * 7 * 2 + 2
    synthesize(tmp_path / "c", SynthConfig(train=70, bench=2, seed=6), workers=1, progress=False)
    c = _digest(tmp_path / "c")
    assert c.keys() == a.keys() and sum(a[k] != c[k] for k in a) > 0.9 * len(a)
    t1, t2 = train_triplet(33, cfg), train_triplet(33, cfg)
    assert t1.edit == t2.edit and np.array_equal(t1.edited, t2.edited) and t1.rewards == t2.rewards


def test_cli_synth_writes_a_folder_that_round_trips(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert (
        data_main(
            [
                "synth",
                "--out",
                str(out),
                "--train",
                "24",
                "--bench",
                "3",
                "--seed",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "24 training triplets and 21 benchmark items" in capsys.readouterr().out
    info = json.loads((out / "info.json").read_text())
    assert info["items"] == {"train": 24, "bench": 21} and info["config"]["seed"] == 2
    train, bench = load_split(out, "train"), load_split(out, "bench")
    assert [t.id for t in train] == [f"train-{i:06d}" for i in range(24)]
    assert len(bench) == 21 and {b.category for b in bench} == set(CATEGORIES)
    assert all(b.edited is None and b.rewards is None for b in bench)
    cfg = SynthConfig(train=24, bench=3, seed=2)
    for item in train[:8]:
        again = train_triplet(int(item.id.split("-")[1]), cfg)
        assert item.instruction == again.edit.instruction and item.meta == again.meta
        assert np.array_equal(item.load("edited"), again.edited)
        assert np.array_equal(item.load("mask"), again.mask)
        assert item.rewards == again.rewards  # stored labels parse back exactly
        judged = ShapesOracle().annotate(
            item.load("original"),
            item.instruction,
            item.load("edited"),
            item.load("target"),
            item.load("mask"),
            item.meta,
        )
        assert judged == item.rewards


def test_cli_synth_refuses_bad_arguments_and_existing_folders(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        data_main(["synth", "--out", str(tmp_path / "x"), "--size", "300"])
    assert e.value.code == 2 and "between 32 and 256" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_main(["synth", "--out", str(tmp_path / "x"), "--p-quality", "2"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert (
        data_main(["synth", "--out", str(busy), "--train", "2", "--bench", "0", "--no-progress"])
        == 2
    )
    assert "not empty" in capsys.readouterr().err
    assert (
        data_main(
            [
                "synth",
                "--out",
                str(busy),
                "--train",
                "2",
                "--bench",
                "0",
                "--overwrite",
                "--no-progress",
            ]
        )
        == 2
    )
    assert (busy / "notes.txt").read_text() == "keep me"  # not a Shapes folder: never deleted


def test_load_split_reports_broken_folders(tmp_path):
    out = tmp_path / "s"
    synthesize(out, SynthConfig(train=3, bench=1), workers=1, progress=False)
    with pytest.raises(ShapesFolderError, match="not a Shapes folder"):
        load_split(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_split(out, "test")
    manifest = out / "train" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], lines[1][:-5], lines[2]]) + "\n")
    with pytest.raises(ShapesFolderError, match=r"manifest.jsonl:2"):
        load_split(out, "train")
    rec = json.loads(lines[1])
    rec["rewards"]["quality"]["score"] = 7
    manifest.write_text("\n".join([lines[0], json.dumps(rec), lines[2]]) + "\n")
    with pytest.raises(ShapesFolderError, match="bad rewards"):
        load_split(out, "train")
    manifest.write_text("\n".join(lines) + "\n")
    (out / "train" / "target" / "000002.png").unlink()
    with pytest.raises(ShapesFolderError, match="does not exist"):
        load_split(out, "train")
    assert len(load_split(out, "train", check_files=False)) == 3
    info = json.loads((out / "info.json").read_text())
    (out / "info.json").write_text(json.dumps({**info, "complete": False}))  # as if interrupted
    with pytest.raises(ShapesFolderError, match="incomplete"):
        load_split(out, "bench")
    synthesize(out, SynthConfig(train=3, bench=1), workers=1, progress=False, overwrite=True)
    assert len(load_split(out, "train")) == 3


def test_cli_synth_loads_triplets_and_oracle_labels_into_the_store(tmp_path, capsys):
    from core.judges.base import idempotency_key
    from core.store import Store
    from data.shapes_judge import oracle_spec

    out, db = tmp_path / "s", tmp_path / "studio.db"
    args = [
        "synth",
        "--out",
        str(out),
        "--train",
        "12",
        "--bench",
        "1",
        "--db",
        str(db),
        "--no-progress",
    ]
    assert data_main(args) == 0
    assert "loaded 19 triplets and 12 oracle labels" in capsys.readouterr().out
    store = Store(db)
    assert store.count_triplets(source="shapes", split="train") == 12
    assert store.count_triplets(source="shapes", split="bench") == 7
    assert store.count("annotations") == 12
    assert data_main([*args, "--overwrite"]) == 0  # same folder again: nothing new
    assert store.count("triplets") == 19 and store.count("annotations") == 12
    spec = oracle_spec(ShapesOracle())
    train = {t.id: t for t in load_split(out, "train")}
    for ann in store.annotations(kind="oracle"):
        t = store.get_triplet(ann["triplet_id"])
        item = train[t["external_id"]]
        assert ann["rewards"] == item.rewards and ann["judge_model"] == spec.model
        assert ann["key"] == idempotency_key(
            t["original"], t["edited"], t["instruction"], spec, "annotate"
        )


def test_data_cli_registers_every_listed_subcommand_module():
    import data.shapes.synth
    from data.cli import COMMAND_MODULES, build_parser

    parser = build_parser()
    assert parser.parse_args(["synth", "--out", "x"]).func is data.shapes.synth.run
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "synth" in sub.choices and len(sub.choices) >= len(COMMAND_MODULES)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a subcommand is required


def test_wrong_object_corruption_skips_when_no_shape_is_distinct():
    """Regression: at 32 px a tiny added object looks alike in every shape; the 'wrong object'
    corruption must then be skipped (another one is drawn), not crash the whole synth run."""
    from data.shapes.synth import SynthConfig, train_triplet

    t = train_triplet(1616, SynthConfig(train=60000, size=32, seed=0))  # crashed before the fix
    assert t.edited is not None and t.edited.shape == (32, 32, 3)
