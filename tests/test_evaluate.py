"""``python -m train.evaluate``'s run on tiny models: generation, judging, failure accounting,
resume, reuse, the report files, judge agreement and best-of-N. Systems, benchmarks and
metrics: test_evaluate_inputs.py; the command line: test_evaluate_cli.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.store import Store
from tests._evaluate_helpers import (
    FakeJudge,
    _config,
    _output_hashes,
    assert_same_outputs,
    make_folder_benchmark,
    tiny_pipelines,
)
from train.evaluate.cli import run_evaluation
from train.evaluate.systems import item_seed, parse_system, safe_name

# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_pipelines(tmp_path_factory)


# -- the run -----------------------------------------------------------------------------------


def test_run_counts_failures_and_writes_every_table(tmp_path, models):
    bench = make_folder_benchmark(tmp_path / "bench")
    judge = FakeJudge()
    info = run_evaluation(_config(bench, models, tmp_path / "out"), judge=judge)
    names = [s["system"] for s in info["systems"]]
    assert names == ["base", "mrc@0/0/0", "mrc@5/5/5"]
    assert [s["generated_now"] for s in info["systems"]] == [6, 6, 6]
    assert judge.calls == 18
    j = info["judging"]["judge"]
    assert (j["ok"], j["failed"]) == (15, {"unparsable": 3})

    report = tmp_path / "out" / "report"
    t1 = pd.read_csv(report / "table1.csv")
    assert set(t1["system"]) == set(names)
    assert (t1["n_items"] == 6).all() and (t1["n_failed"] == 1).all()
    failures = pd.read_csv(report / "failures.csv")
    assert failures.to_dict("records") == [
        {"system": s, "reason_code": "unparsable", "n_items": 1} for s in sorted(names)
    ]
    verdicts = pd.read_csv(report / "verdicts.csv")
    assert len(verdicts) == 3 * 6 * 3  # every (system, item, perspective), failed ones included
    # accuracy is the mean over the ok verdicts, recomputed here from the raw table
    ok = verdicts[(verdicts.status == "ok") & (verdicts.perspective == "following")]
    expected = ok.groupby("system")["passed"].mean()
    got = t1[t1.perspective == "following"].set_index("system")["acc"]
    assert np.allclose(got.loc[expected.index], expected)

    md = (report / "report.md").read_text()
    for section in ("Table 1", "Per category", "Table 4 analogue", "Table 6 analogue", "Failures"):
        assert section in md
    assert (report / "controllability.png").stat().st_size > 0
    sweep = pd.read_csv(report / "sweep.csv")
    assert sorted(set(sweep["req_f"])) == [0, 5]
    paired = pd.read_csv(report / "paired.csv")
    assert {"McNemar (exact)", "paired permutation (sign-flip)"} <= set(paired["test"])
    metrics = pd.read_csv(report / "metrics.csv")
    assert {"l1", "psnr", "l1_input"} <= set(metrics["metric"])
    # the MRC rewards matter: 0/0/0 and 5/5/5 give different pictures
    hashes = _output_hashes(tmp_path / "out" / "store.db")
    assert hashes[("mrc@0/0/0", "item0")] != hashes[("mrc@5/5/5", "item0")]


def test_gallery_uses_neutral_names(tmp_path, models):
    bench = make_folder_benchmark(tmp_path / "bench", n=3, fail=())
    run_evaluation(_config(bench, models, tmp_path / "out", sweep=None), judge=FakeJudge())
    gallery = tmp_path / "out" / "gallery"
    files = [p.name for p in (gallery / "img").iterdir()]
    assert files and all(len(Path(f).stem) == 64 for f in files)
    page = (gallery / "index.html").read_text()
    assert "make the square red 0" in page and "F yes" in page or "F no" in page
    assert (tmp_path / "out" / "report" / "gallery.png").is_file()


def test_rerun_generates_and_judges_nothing_new(tmp_path, models):
    bench = make_folder_benchmark(tmp_path / "bench")
    cfg = _config(bench, models, tmp_path / "out", sweep=None)
    run_evaluation(cfg, judge=FakeJudge())
    before = (tmp_path / "out" / "report" / "table1.csv").read_text()
    again = FakeJudge()
    info = run_evaluation(cfg, judge=again)
    assert again.calls == 0
    assert [s["generated_now"] for s in info["systems"]] == [0, 0]
    assert [s["reused"] for s in info["systems"]] == [6, 6]
    j = info["judging"]["judge"]
    assert (j["planned"], j["reused_ok"], j["reused_failed"]) == (0, 10, 2)
    assert (tmp_path / "out" / "report" / "table1.csv").read_text() == before
    quiet = FakeJudge()
    run_evaluation(replace(cfg, report_only=True), judge=quiet)
    assert quiet.calls == 0
    assert (tmp_path / "out" / "report" / "table1.csv").read_text() == before
    # --retry-failed asks the judge again about the failed ones only
    retry = FakeJudge()
    info = run_evaluation(replace(cfg, retry_failed=True), judge=retry)
    assert retry.calls == 2 and info["judging"]["judge"]["failed"] == {"unparsable": 2}
    # a new judge version judges everything again, and both are kept in the store
    v2 = FakeJudge("fake-v2")
    run_evaluation(cfg, judge=v2)
    assert v2.calls == 12


def test_kill_during_generation_then_resume_matches_an_uninterrupted_run(tmp_path, models):
    bench = make_folder_benchmark(tmp_path / "bench", fail=())
    one = dict(systems=(f"base={models['ip2p']}", f"mrc={models['mrc']}"), sweep=None)
    clean = tmp_path / "clean"
    run_evaluation(_config(bench, models, clean, **one), judge=FakeJudge())

    out = tmp_path / "killed"
    calls = {"n": 0}
    original = Store.add_output

    def dying(self, *a, **kw):  # the process "dies" after 8 stored outputs (mid second system)
        if calls["n"] == 8:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *a, **kw)

    Store.add_output = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            run_evaluation(_config(bench, models, out, **one), judge=FakeJudge())
    finally:
        Store.add_output = original
    judge = FakeJudge()
    info = run_evaluation(_config(bench, models, out, **one), judge=judge)
    assert [s["reused"] for s in info["systems"]] == [6, 2]
    assert [s["generated_now"] for s in info["systems"]] == [0, 4]
    assert judge.calls == 12
    assert_same_outputs(out / "store.db", clean / "store.db")


def test_a_smaller_selection_reuses_outputs_and_seeds_do_not_depend_on_batching(tmp_path, models):
    bench = make_folder_benchmark(tmp_path / "bench", fail=())
    one = dict(systems=(f"mrc={models['mrc']}",), sweep=None)
    out = tmp_path / "out"
    run_evaluation(_config(bench, models, out, limit=3, batch_size=1, **one), judge=FakeJudge())
    info = run_evaluation(_config(bench, models, out, batch_size=6, **one), judge=FakeJudge())
    assert [s["reused"] for s in info["systems"]] == [3]
    single = tmp_path / "single"
    run_evaluation(_config(bench, models, single, batch_size=6, **one), judge=FakeJudge())
    assert_same_outputs(out / "store.db", single / "store.db")


def test_folder_system_with_missing_and_broken_outputs(tmp_path, models):
    bench = make_folder_benchmark(tmp_path / "bench", fail=())
    made = tmp_path / "made"
    made.mkdir()
    Image.new("RGB", (32, 32), "red").save(made / f"{safe_name('item0')}.png")
    Image.new("RGB", (32, 32), "blue").save(made / f"{safe_name('item1')}.png")
    (made / f"{safe_name('item2')}.png").write_bytes(b"not a png")
    cfg = _config(bench, models, tmp_path / "out", systems=(f"other={made}",), sweep=None)
    info = run_evaluation(cfg, judge=FakeJudge())
    assert info["systems"][0]["outputs"] == 2 and info["systems"][0]["missing"] == 4
    failures = pd.read_csv(tmp_path / "out" / "report" / "failures.csv")
    assert dict(zip(failures.reason_code, failures.n_items)) == {"bad_output": 1, "no_output": 3}
    t1 = pd.read_csv(tmp_path / "out" / "report" / "table1.csv")
    assert (t1["n_failed"] == 4).all() and (t1["n_items"] == 6).all()
    # an output added later is picked up; the earlier ones and their verdicts are reused
    Image.new("RGB", (32, 32), "green").save(made / f"{safe_name('item3')}.png")
    judge = FakeJudge()
    info = run_evaluation(cfg, judge=judge)
    assert info["systems"][0]["generated_now"] == 1 and judge.calls == 1
    # a changed output is an error, never a silent reuse of stale verdicts
    Image.new("RGB", (32, 32), "white").save(made / f"{safe_name('item0')}.png")
    with pytest.raises(ValueError, match="differs from the one"):
        run_evaluation(cfg, judge=FakeJudge())


def test_worst_case_policy_and_explicit_comparison(tmp_path, models):
    bench = make_folder_benchmark(tmp_path / "bench")
    cfg = _config(bench, models, tmp_path / "out", failure_policy="worst",
                  compare=("mrc@0/0/0:mrc@5/5/5",))  # fmt: skip
    run_evaluation(cfg, judge=FakeJudge())
    paired = pd.read_csv(tmp_path / "out" / "report" / "paired.csv")
    assert set(zip(paired.a, paired.b)) == {("mrc@0/0/0", "mrc@5/5/5")}
    overall = paired[paired.category == "all"]
    assert (overall["n"] == 6).all()  # failures count as no/0, so every item is compared
    with pytest.raises(ValueError, match="unknown system"):
        run_evaluation(_config(bench, models, tmp_path / "o2", compare=("x:y",)), judge=FakeJudge())


def test_judge_agreement_with_a_ground_truth_judge(tmp_path, models):
    bench = make_folder_benchmark(tmp_path / "bench", n=4, fail=(1,))
    cfg = _config(bench, models, tmp_path / "out", sweep=None)
    info = run_evaluation(cfg, judge=FakeJudge(), truth_judge=FakeJudge("truth-v1"))
    assert info["judging"]["truth"]["ok"] == 6 and info["judging"]["truth"]["failed"] == {
        "unparsable": 2
    }
    agree = pd.read_csv(tmp_path / "out" / "report" / "agreement.csv")
    overall = agree[agree.system == "all"].set_index("perspective")
    # both judges answer from the same image bytes, so they agree wherever both succeeded
    assert (overall["agreement"] == 1.0).all() and (overall["score_mae"] == 0.0).all()
    assert (overall["n"] == 6).all() and (overall["n_failed"] == 2).all()
    assert "Judge vs ground truth" in (tmp_path / "out" / "report" / "report.md").read_text()
    with pytest.raises(ValueError, match="needs each item's scene and edit"):
        run_evaluation(_config(bench, models, tmp_path / "o2", judge="oracle"))


# -- best-of-N -----------------------------------------------------------------------------------


class BrightnessModel:
    """A stand-in reward model: the brighter the edited image, the better (all perspectives)."""

    config = None

    def predict(self, originals, instructions, editeds, batch_size=256):
        from core.reward_model import RewardPrediction

        m = torch.tensor([np.asarray(e, dtype=float).mean() / 51.0 for e in editeds])
        mean = m[:, None].repeat(1, 3).float()
        return RewardPrediction(mean, torch.zeros_like(mean))


def test_best_of_n_keeps_the_reward_models_favourite_and_candidate_0_is_the_single_sample(
    tmp_path, models
):
    from train.evaluate.generate import candidate_seeds, generate, load_pipeline

    rm_dir = tmp_path / "rm"
    rm_dir.mkdir()
    single = parse_system(f"s={models['mrc']},steps=2")
    best = parse_system(f"b={models['mrc']},steps=2,best_of=3,reward_model={rm_dir}")
    assert "best_of" not in single.settings()  # single-sample fingerprints are unchanged
    assert best.fingerprint("d") != replace(best, best_of=2).fingerprint("d")
    pipe = load_pipeline(best)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    todo = [(f"item{i}", "turn the square red", lambda: img) for i in range(3)]
    got, one = [], []
    generate(pipe, best, todo, 2, on_result=got.append, reward_model=BrightnessModel())
    generate(pipe, single, todo, 2, on_result=one.append)
    for r, s in zip(got, one):
        seeds = candidate_seeds(best, r.item_id)
        assert seeds[0] == s.seed == item_seed(0, r.item_id)
        assert [c["seed"] for c in r.candidates] == seeds
        scores = [c["score"] for c in r.candidates]
        chosen = scores.index(max(scores))
        assert [c["chosen"] for c in r.candidates] == [k == chosen for k in range(3)]
        assert r.seed == seeds[chosen]
        # The kept image is the candidate drawn with that seed (the same as drawing it alone).
        alone = pipe("turn the square red", image=img, generator=torch.Generator().manual_seed(r.seed),
                     num_inference_steps=2).images[0]  # fmt: skip
        assert np.abs(np.asarray(alone, int) - np.asarray(r.image, int)).max() <= 1
    cand0 = [pipe("turn the square red", image=img, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(s.seed)).images[0] for s in one]  # fmt: skip
    for s, c in zip(one, cand0):
        assert np.abs(np.asarray(c, int) - np.asarray(s.image, int)).max() <= 1
    with pytest.raises(ValueError, match="pass its reward model"):
        generate(pipe, best, todo, 2)
    with pytest.raises(ValueError, match="reward_model=FOLDER"):
        parse_system(f"b={models['mrc']},best_of=4")


def test_best_of_n_system_in_a_run_stores_every_candidates_scores(tmp_path, models):
    from core.reward_model import EditRewardModel

    torch.manual_seed(0)
    clip = Path(__file__).resolve().parents[1] / "docs" / "demo_models" / "shapes_clip"
    EditRewardModel.from_text_tower(clip, image_size=16, channels=(8, 16), hidden_dim=32
                                    ).save_pretrained(tmp_path / "rm")  # fmt: skip
    bench = make_folder_benchmark(tmp_path / "bench", n=3)
    cfg = _config(bench, models, tmp_path / "out", sweep=None,
                  systems=(f"bo2={models['mrc']},best_of=2,reward_model={tmp_path / 'rm'}",))  # fmt: skip
    run_evaluation(cfg, judge=FakeJudge())
    store = Store(tmp_path / "out" / "store.db")
    (run,) = store.list_runs()
    assert run["settings"]["best_of"] == 2
    outputs = store.outputs(run["id"])
    assert len(outputs) == 3
    for o in outputs:
        cands = o["meta"]["candidates"]
        assert len(cands) == 2 and sum(c["chosen"] for c in cands) == 1
        assert set(cands[0]["mean"]) == {"following", "preserving", "quality"}


def test_a_model_moved_to_another_folder_reuses_its_outputs(tmp_path, models, caplog):
    import shutil

    bench = make_folder_benchmark(tmp_path / "bench")
    cfg = _config(bench, models, tmp_path / "out", sweep=None, systems=(f"mrc={models['mrc']}",))
    run_evaluation(cfg, judge=FakeJudge())
    moved = tmp_path / "shipped" / "mrc"
    shutil.copytree(models["mrc"], moved)  # same files, another path (e.g. shipped)
    again = FakeJudge()
    with caplog.at_level("INFO", logger="train.evaluate.runner"):
        info = run_evaluation(replace(cfg, systems=(f"mrc={moved}",)), judge=again)
    assert again.calls == 0 and [s["generated_now"] for s in info["systems"]] == [0]
    assert "holds the same files" in caplog.text
    # different files under the old name are a different system: generated anew
    changed = tmp_path / "changed" / "mrc"
    shutil.copytree(models["mrc"], changed)
    (changed / "model_index.json").write_text(
        (changed / "model_index.json")
        .read_text()
        .replace("}", ', "default_guidance_scale": 3.0}', 1)
    )
    info = run_evaluation(replace(cfg, systems=(f"mrc={changed}",)), judge=FakeJudge())
    assert [s["generated_now"] for s in info["systems"]] == [6]
