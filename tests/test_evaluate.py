"""``python -m train.evaluate`` on tiny models: generation, judging, failure accounting, resume,
benchmark loaders, systems, reference metrics and the report files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.judges.base import Evaluation, Judge, JudgeResult, JudgeSpec, Verdict
from core.store import Store
from train.evaluate.benchmark_items import (
    BenchmarkError,
    FolderColumns,
    load_folder,
    load_real_edit,
    parse_real_edit_entry,
)
from train.evaluate.benchmarks import load_benchmark
from train.evaluate.cli import EvalConfig, run_evaluation
from train.evaluate.image_metrics import (
    ClipConfig,
    ClipScorer,
    MetricInput,
    compute_metrics,
    l1_distance,
    psnr,
)
from train.evaluate.systems import (
    expand_sweep,
    item_seed,
    parse_rewards,
    parse_sweep,
    parse_system,
    safe_name,
)

CATS = ["local", "remove", "add", "local", "remove", "add"]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny MRC pipeline whose reward module is *not* the identity (so rewards change the
    output) and the stock diffusers InstructPix2Pix pipeline on the same weights."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from core.mrc import MultiRewardCondition
    from core.pipeline import MRCInstructPix2PixPipeline
    from core.tiny import TinyConfig, build_components

    root = tmp_path_factory.mktemp("models")
    cfg = TinyConfig()
    parts = build_components(cfg, seed=0)
    torch.manual_seed(0)
    reward = MultiRewardCondition.from_unet_config(
        parts["unet"].config, cfg.text_dim, identity_init=False
    )
    with torch.no_grad():
        for p in reward.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    MRCInstructPix2PixPipeline(**parts, reward_module=reward).save_pretrained(root / "mrc")
    StableDiffusionInstructPix2PixPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(root / "ip2p")
    return {"mrc": root / "mrc", "ip2p": root / "ip2p"}


def make_folder_benchmark(root: Path, n: int = 6, fail: tuple[int, ...] = (2,)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(a).save(root / f"in{i}.png")
        Image.fromarray(255 - a).save(root / f"gt{i}.png")
        text = f"make the square red {i}" + (" FAIL" if i in fail else "")
        rows.append({"file_name": f"in{i}.png", "instruction": text, "category": CATS[i % 6],
                     "target": f"gt{i}.png", "id": f"item{i}"})  # fmt: skip
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


class FakeJudge(Judge):
    """Deterministic verdicts from the edited image's bytes; fails on instructions with FAIL."""

    def __init__(self, model: str = "fake-v1") -> None:
        self.spec = JudgeSpec("fake", model, "v1")
        self.calls = 0

    async def _judge(self, task, item):
        self.calls += 1
        if "FAIL" in item.instruction:
            return JudgeResult.failed(
                task, self.spec, "unparsable", "The reply had no verdict.", "?"
            )
        h = hashlib.sha256(item.edited).digest()
        verdicts = [Verdict(h[k] % 2 == 0, (h[k] % 11) / 2) for k in range(3)]
        return JudgeResult(task, "ok", self.spec, evaluation=Evaluation(*verdicts))


def _config(bench: Path, models: dict[str, Path], out: Path, **kw) -> EvalConfig:
    base = dict(
        benchmark=f"folder:{bench}",
        systems=(f"base={models['ip2p']}", f"mrc={models['mrc']}"),
        out=str(out), sweep="0,5", steps=2, bootstrap=300, progress=False, batch_size=4,
    )  # fmt: skip
    base.update(kw)
    return EvalConfig(**base)


def assert_same_outputs(a: Path, b: Path) -> None:
    """Same systems and items, and the same pictures up to float rounding across batch shapes
    (batched and single convolutions differ in the last bits: at most 1/255 after quantising)."""
    ha, hb = _output_hashes(a), _output_hashes(b)
    assert ha.keys() == hb.keys()
    sa, sb = Store(a), Store(b)
    for key in ha:
        x = np.asarray(sa.image(ha[key]), dtype=int)
        y = np.asarray(sb.image(hb[key]), dtype=int)
        assert np.abs(x - y).max() <= 1, key


def _output_hashes(store_path: Path) -> dict[tuple[str, str], str]:
    store = Store(store_path)
    out = {}
    for run in store.list_runs():
        for o in store.outputs(run["id"]):
            out[(run["settings"]["system"], o["meta"].get("item_id", o["item_id"]))] = o["image"]
    return out


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


# -- systems -------------------------------------------------------------------------------------


def test_unset_guidance_is_the_folders_recorded_default(models, tmp_path):
    import shutil

    assert (parse_system(f"m={models['mrc']}").guidance_scale,
            parse_system(f"m={models['mrc']}").image_guidance_scale) == (7.5, 1.5)  # fmt: skip
    folder = tmp_path / "tuned"
    shutil.copytree(models["mrc"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(default_guidance_scale=2.0, default_image_guidance_scale=1.25)
    (folder / "model_index.json").write_text(json.dumps(index))
    s = parse_system(f"t={folder}")
    assert (s.guidance_scale, s.image_guidance_scale) == (2.0, 1.25)
    assert parse_system(f"t={folder},guidance=4").guidance_scale == 4.0  # the system's own wins
    cli = {"guidance_scale": None, "image_guidance_scale": 1.5}  # --image-guidance 1.5 only
    s = parse_system(f"t={folder}", cli)
    assert (s.guidance_scale, s.image_guidance_scale) == (2.0, 1.5)
    assert s.fingerprint("d") != parse_system(f"t={folder},guidance=7.5", cli).fingerprint("d")


def test_system_parsing_and_sweeps(models):
    s = parse_system(f"m={models['mrc']},rewards=5/3/1,steps=7,reward_guidance=2,reward_text=a;b;c")
    assert (s.kind, s.rewards, s.num_inference_steps) == ("mrc", (5.0, 3.0, 1.0), 7)
    assert s.reward_guidance_scale == 2.0 and s.reward_text == ("a", "b", "c")
    assert parse_system(f"b={models['ip2p']}").kind == "ip2p"
    assert parse_rewards("3") == (3.0, 3.0, 3.0)
    assert parse_sweep("0,3,5,0") == [(0, 0, 0), (3, 3, 3), (5, 5, 5)]
    assert parse_sweep("5/5/0, 0/0/0") == [(5, 5, 0), (0, 0, 0)]
    variants = expand_sweep([s, parse_system(f"b={models['ip2p']}")], parse_sweep("0,5"))
    assert [v.name for v in variants] == ["m", "m@0/0/0", "m@5/5/5", "b"]
    assert {v.group for v in variants[:3]} == {"m"}
    a, b = s.fingerprint("d1"), s.fingerprint("d2")
    assert a != b and a == s.fingerprint("d1")
    assert item_seed(0, "x") == item_seed(0, "x") != item_seed(1, "x")
    for bad, msg in [
        ("m", "NAME=PATH"),
        (f"m={models['mrc']},colour=red", "unknown option"),
        (f"m={models['mrc']},rewards=6/5/5", "outside"),
        ("m=/no/such/folder", "not a local pipeline"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_system(bad)


# -- benchmarks ----------------------------------------------------------------------------------


def test_real_edit_release_layout(tmp_path):
    root = tmp_path / "real"
    (root / "Real-Edit").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(root / "Real-Edit" / "1.jpg")
    Image.new("RGB", (40, 30), "black").save(root / "Real-Edit" / "2.jpg")
    entries = ["Local: make the car red", "Remove: remove the dog", "Add: add a hat",
               "Texture: make it wooden", "Background: a beach", "Global: make it night",
               "Style: as a watercolor"]  # fmt: skip
    doc = {"1.jpg": entries, "2.jpg": [e.split(": ")[1] for e in entries]}
    (root / "real_edit_instruct.json").write_text(json.dumps(doc))
    b = load_real_edit(root)
    assert len(b) == 14 and b.items[0].item_id == "1/0" and b.items[0].category == "local"
    assert b.items[6].instruction == "as a watercolor" and b.items[6].category == "style"
    assert b.items[7].category is None and any("name no category" in n for n in b.notes)
    assert any("the paper's Real-Edit has 80" in n for n in b.notes)
    p = load_real_edit(root, category_by_position=True)
    assert [i.category for i in p.items[7:]] == [e.split(":")[0].lower() for e in entries]
    assert load_benchmark(f"real-edit:{root}").name == "real-edit"
    assert parse_real_edit_entry("3. Background editing: sky", "x") == ("background", "sky")
    assert parse_real_edit_entry({"category": "Style", "instruction": "oil"}, "x") == (
        "style",
        "oil",
    )
    doc["3.jpg"] = ["Local: x"]
    (root / "real_edit_instruct.json").write_text(json.dumps(doc))
    with pytest.raises(BenchmarkError, match="3.jpg.*not found"):
        load_real_edit(root)
    with pytest.raises(BenchmarkError, match="neither a folder nor a hub id"):
        load_real_edit(tmp_path / "missing folder")


def test_folder_layout_errors_name_the_row(tmp_path):
    root = make_folder_benchmark(tmp_path / "b", n=2, fail=())
    b = load_folder(root)
    assert [i.item_id for i in b.items] == ["item0", "item1"] and b.has_targets
    assert b.select(per_category=1, categories=["local"]).items[0].item_id == "item0"
    with pytest.raises(BenchmarkError, match="no category"):
        b.select(categories=["style"])
    rows = [{"picture": "in0.png", "instruction": "x"}]
    (root / "metadata.jsonl").write_text(json.dumps(rows[0]))
    with pytest.raises(BenchmarkError, match="needs a image column"):
        load_folder(root)
    assert load_folder(root, FolderColumns(image="picture")).items[0].instruction == "x"
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "nope.png", "instruction": "x"}))
    with pytest.raises(BenchmarkError, match="row 1.*does not exist"):
        load_folder(root)
    (root / "metadata.jsonl").write_text("{broken")
    with pytest.raises(BenchmarkError, match="line 1 is not valid JSON"):
        load_folder(root)
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("imagenet")


# -- reference metrics ---------------------------------------------------------------------------


def test_pixel_metrics_closed_form():
    a = Image.new("RGB", (8, 8), (0, 0, 0))
    b = Image.new("RGB", (8, 8), (51, 51, 51))  # 0.2 on [0, 1]
    assert l1_distance(a, b) == pytest.approx(0.2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(1 / 0.04))
    assert psnr(a, a) == 100.0
    assert l1_distance(Image.new("RGB", (16, 16), (51, 51, 51)), b) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(root)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    cfg = CLIPConfig(
        text_config=dict(**small, vocab_size=len(vocab), max_position_embeddings=32,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(**small, image_size=32, patch_size=8), projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(root)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root)
    return root


def test_clip_metrics_on_a_tiny_random_clip(tiny_clip):
    clip = ClipScorer(ClipConfig(str(tiny_clip), batch_size=2))
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(5)]
    same = clip.clip_i(imgs, imgs)
    assert np.allclose(same, 1.0, atol=1e-5)
    cross = clip.clip_i(imgs, imgs[::-1])
    assert cross[2] == pytest.approx(1.0, abs=1e-5) and cross[0] < 0.9999
    t = clip.clip_t(imgs, ["a red square"] * 4 + ["a very long text " * 20])  # truncated, no error
    assert t.shape == (5,) and np.all(np.abs(t) <= 1 + 1e-6)
    # batched metrics equal one-by-one metrics, and only what applies is reported
    inputs = [MetricInput(imgs[i], imgs[i + 1], "make it blue", imgs[0] if i else None,
                          "a blue square" if i else None) for i in range(3)]  # fmt: skip
    rows = compute_metrics(inputs, clip)
    assert "clip_i" not in rows[0] and "clip_t" not in rows[0] and "clip_i_input" in rows[0]
    assert rows[1]["clip_i"] == pytest.approx(float(clip.clip_i([imgs[1]], [imgs[0]])[0]), abs=1e-6)
    assert rows[2]["clip_t"] == pytest.approx(
        float(clip.clip_t([imgs[2]], ["a blue square"])[0]), abs=1e-6
    )
    with pytest.raises(OSError, match="has no config.json"):
        ClipScorer(ClipConfig(str(tiny_clip.parent)))


def test_run_with_clip_reports_table2_metrics(tmp_path, models, tiny_clip):
    bench = make_folder_benchmark(tmp_path / "bench", n=3, fail=())
    cfg = _config(bench, models, tmp_path / "out", sweep=None, clip=str(tiny_clip))
    run_evaluation(cfg, judge=FakeJudge())
    m = pd.read_csv(tmp_path / "out" / "report" / "metrics.csv")
    assert {"clip_i", "clip_i_input", "clip_t_instruction", "l1", "psnr"} <= set(m["metric"])
    assert "CLIP-I (output vs target)" in (tmp_path / "out" / "report" / "report.md").read_text()


# -- the command line, against the local OpenAI-compatible judge server --------------------------


def test_cli_end_to_end_with_a_vlm_judge_over_http(tmp_path, models, monkeypatch, capsys):
    """``python -m train.evaluate`` with ``--judge openai`` against data.judge_server: the
    server does not know items 2 and 4 (HTTP 400), so their verdicts fail as ``rejected``."""
    from core.images import image_hash, load_image
    from data.judge_server import FaultConfig, ServerState, start_server
    from tests._judge_fakes import HashAnswerer
    from train.evaluate.cli import main

    bench = make_folder_benchmark(tmp_path / "bench", fail=())
    known = {image_hash(load_image(bench / f"in{i}.png")) for i in (0, 1, 3, 5)}
    srv = start_server(ServerState(HashAnswerer(known), FaultConfig(seed=0)))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    argv = ["--benchmark", f"folder:{bench}", "--system", f"base={models['ip2p']}",
            "--system", f"mrc={models['mrc']}", "--sweep", "0,5", "--steps", "2",
            "--judge", "openai", "--judge-base-url", srv.url, "--judge-model", "judge-test",
            "--bootstrap", "200", "--no-progress", "--out", str(tmp_path / "out")]  # fmt: skip
    try:
        assert main(argv) == 0
        first = srv.state.stats()["chat_completions"]
        assert first == 3 * 4  # four known items per system, one call each (mode "one")
        printed = capsys.readouterr().out
        assert "| `mrc@5/5/5` |" in printed and "report.md" in printed
        failures = pd.read_csv(tmp_path / "out" / "report" / "failures.csv")
        assert set(failures.reason_code) == {"rejected"} and (failures.n_items == 2).all()
        assert main(argv) == 0  # the re-run asks the server nothing
        assert srv.state.stats()["chat_completions"] == first
        info = json.loads((tmp_path / "out" / "run.json").read_text())
        assert info["judging"]["judge"]["reused_ok"] == 12
        assert info["judging"]["judge"]["reused_failed"] == 6
    finally:
        srv.shutdown()
        srv.server_close()
    assert main(["--benchmark", "nope", "--system", "a=b", "--out", str(tmp_path / "x")]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


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


# -- Shapes-Edit with the oracle: the acceptance command on tiny models ------------------------


def test_shapes_benchmark_command_with_the_oracle(tmp_path, models, capsys):
    """The Table 1 / 4 / 6 command on Shapes-Edit (one item per category): the ground truth as
    a system scores 5/5/5, a copy of the input follows nothing but preserves everything."""
    from train.evaluate.cli import main

    bench = load_benchmark("shapes").select(per_category=1)
    assert len(bench) == 7 and len(bench.categories) == 7
    gt, copy = tmp_path / "gt", tmp_path / "copy"
    gt.mkdir()
    copy.mkdir()
    for item in bench.items:
        item.load_target().save(gt / f"{safe_name(item.item_id)}.png")
        item.load_image().save(copy / f"{safe_name(item.item_id)}.png")
    out = tmp_path / "out"
    argv = ["--benchmark", "shapes", "--per-category", "1", "--system", f"truth={gt}",
            "--system", f"copy={copy}", "--system", f"mrc={models['mrc']}", "--sweep", "0,5",
            "--steps", "2", "--judge", "oracle", "--bootstrap", "200", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    t1 = pd.read_csv(out / "report" / "table1.csv").set_index(["system", "perspective"])
    for p in ("following", "preserving", "quality"):
        assert t1.loc[("truth", p), "acc"] == 1.0 and t1.loc[("truth", p), "score"] == 5.0
    assert t1.loc[("copy", "following"), "acc"] == 0.0
    assert t1.loc[("copy", "preserving"), "score"] == 5.0
    assert (t1["n_items"] == 7).all() and (t1["n_failed"] == 0).all()
    md = (out / "report" / "report.md").read_text()
    assert "`copy` (B) vs `truth` (A)" in md and "### `mrc`" in md  # Table 4 and Table 6
    by_cat = pd.read_csv(out / "report" / "table1_by_category.csv")
    assert len(set(by_cat["category"])) == 7
    assert main(argv) == 0  # nothing left to do on the second run
    info = json.loads((out / "run.json").read_text())
    assert info["judging"]["judge"]["planned"] == 0
    assert [s["generated_now"] for s in info["systems"]] == [0, 0, 0, 0]


def test_every_flag_is_documented():
    from train.evaluate.cli import build_parser

    docs = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text()
    flags = [o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")]
    missing = [f for f in flags if f != "--help" and f"`{f}" not in docs]
    assert not missing, f"flags missing from docs/evaluation.md: {missing}"


def test_generated_shapes_equal_the_synth_folder(tmp_path):
    from data.shapes import SynthConfig, synthesize

    synthesize(tmp_path / "s", SynthConfig(train=0, bench=2, size=32), workers=1, progress=False)
    folder = load_benchmark(f"shapes:{tmp_path / 's'}")
    generated = load_benchmark("shapes?size=32&scenes=2")
    assert len(folder) == len(generated) == 14
    for a, b in zip(folder.items, generated.items):
        assert (a.item_id, a.instruction, a.category) == (b.item_id, b.instruction, b.category)
        assert a.context == b.context
        assert np.array_equal(np.asarray(a.load_image()), np.asarray(b.load_image()))
        assert np.array_equal(np.asarray(a.load_target()), np.asarray(b.load_target()))
    with pytest.raises(BenchmarkError, match="unknown Shapes option"):
        load_benchmark("shapes?colour=red")


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
