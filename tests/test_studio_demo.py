"""The first-run demo store and the ``python app.py users`` command."""

from __future__ import annotations

import io

import pytest

import app as app_cli
from core.store import Store
from studio.app import default_evaluation
from studio.demo import DemoConfig, demo_banner, ensure_demo_store, example_inputs

SMALL = DemoConfig(n_train=16, n_bench_scenes=1)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    return ensure_demo_store(tmp_path_factory.mktemp("demo") / "studio.db", SMALL)


def test_demo_store_has_review_items_and_two_rated_runs(demo_store):
    store = demo_store
    assert store.count_triplets(split="train") == 16
    assert store.count_triplets(split="bench") == 7  # one scene x 7 categories
    judge = store.annotations(kind="judge", task="annotate")
    oracle = store.annotations(kind="oracle", task="annotate")
    assert len(oracle) == 16 and all(a["status"] == "ok" for a in oracle)
    assert {a["judge_model"] for a in judge} == {"demo-noisy-judge"}
    labelled = [a["triplet_id"] for a in judge if a["status"] == "ok"]
    for tid in labelled:  # the review labels are the demo judge's, awaiting review
        label = store.get_label(tid)
        assert label.status == "pending" and label.origin == "judge"
    runs = store.list_runs()
    # The shipped demo models are in the repository, so raters compare their real outputs.
    assert sorted(r["settings"]["system"] for r in runs) == ["shapes-baseline", "shapes-mrc"]
    assert all(r["n_outputs"] == 7 for r in runs)
    # The shipped outputs of these very models (run names carry their fingerprint) spare a
    # first start minutes of generation; a retrained model needs `python -m studio.demo cache`.
    from studio.demo import _cache_folder

    for run in runs:
        index = _cache_folder(run["name"]) / "outputs.json"
        assert index.is_file(), f"no shipped outputs for {run['name']}: python -m studio.demo cache"
    evaluation = default_evaluation(store)
    assert {evaluation.system_a, evaluation.system_b} == {r["name"] for r in runs}
    # Gold pairs (exact target vs a corruption, oracle-scored) for the rating campaign; the
    # app mixes them in at --gold-percent (20 by default).
    assert 5 <= len(store.gold_items()) <= 7
    assert default_evaluation(store, gold_share=0.2).gold_share == 0.2
    for run in runs:  # every output has the oracle's verdict, for judge-vs-human agreement
        verdicts = store.verdicts(run_id=run["id"], judge_model="shapes-oracle-v1", status="ok")
        assert len(verdicts) == 7


def test_without_the_demo_models_two_model_free_systems_stand_in(tmp_path, monkeypatch):
    import studio.demo

    monkeypatch.setattr(studio.demo, "_model_systems", lambda: None)
    store = ensure_demo_store(tmp_path / "studio.db", SMALL)
    runs = store.list_runs()
    assert sorted(r["settings"]["system"] for r in runs) == ["demo-corrupted", "demo-ground-truth"]
    assert all(r["n_outputs"] == 7 for r in runs)
    # The ground truth is exactly right, so the oracle gives it full marks.
    truth = next(r for r in runs if r["settings"]["system"] == "demo-ground-truth")
    verdicts = store.verdicts(run_id=truth["id"], judge_model="shapes-oracle-v1", status="ok")
    assert len(verdicts) == 7
    assert all(v["verdict"][p]["score"] == 5.0 for v in verdicts for p in v["verdict"])


def test_demo_store_is_idempotent_and_deterministic(demo_store, tmp_path):
    counts = {t: demo_store.count(t) for t in ("triplets", "annotations", "labels", "verdicts")}
    again = ensure_demo_store(demo_store.path, SMALL)
    assert {t: again.count(t) for t in counts} == counts
    other = ensure_demo_store(tmp_path / "other.db", SMALL)

    def labels(store: Store) -> dict:
        return {a["triplet_id"]: a["rewards"] for a in store.annotations(kind="judge")}

    assert labels(other) == labels(demo_store)  # seeded: same demo on every machine


def test_banner_and_examples_name_no_system(demo_store):
    class Model:
        trained, name = True, "docs/demo_models/shapes_mrc"

    banner = demo_banner(demo_store, Model())
    assert "16 Shapes training triplets" in banner and "two systems" in banner
    assert "demo-corrupted" not in banner and "demo-ground-truth" not in banner
    # Raters see the banner: no model (it may be a compared system), no server path.
    assert "shapes_mrc" not in banner and str(demo_store.path.parent) not in banner
    examples = example_inputs(demo_store)
    assert len(examples) == 7 and len({text for _, text in examples}) == 7
    # Whole-image edits first: the first example is one the shipped models carry out.
    with demo_store.db() as db:
        category = dict(db.execute("SELECT instruction, category FROM triplets").fetchall())
    assert [category[text] for _, text in examples][:2] == ["background", "global"]


def test_users_command(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "users.db")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert app_cli.main(["--db", db, "users", "add", "alice", "--role", "annotator",
                         "--password-stdin"]) == 0  # fmt: skip
    assert app_cli.main(["--db", db, "users", "list"]) == 0
    assert "alice" in capsys.readouterr().out
    store = Store(db)
    assert store.verify_password("alice", "a long password")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert app_cli.main(["--db", db, "users", "add", "bob", "--role", "rater",
                         "--password-stdin"]) == 2  # fmt: skip
    assert "at least 8 characters" in capsys.readouterr().err
    assert app_cli.main(["--db", db, "users", "remove", "alice"]) == 0
    assert not store.verify_password("alice", "a long password")
    assert app_cli.main(["--db", db, "users", "remove", "nobody"]) == 2


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        app_cli.main(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    assert all(line.count("(default:") <= 1 for line in text.split("  --"))
    assert "--gold-percent" in text and "--reveal" in text
    from train.evaluate.cli import build_parser

    text = build_parser().format_help()
    assert "docs/demo_models/shapes_baseline" in text and "shapes?size=32" in text
    dtype = text[text.index("  --dtype {") :].split("\n  --")[0]
    assert "memory" in dtype and "[float32]" in dtype
