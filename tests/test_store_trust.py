"""core.store, trust in a rating campaign: gold pairs, local-mode ratings, excluded raters, and
the 0005 migration that adds them to an older database."""

from __future__ import annotations

import sqlite3

import pytest
from sqlite_utils import Database

from core.store import Store, StoreInputError
from tests._store_helpers import add, img


def _pair(store: Store, item: str) -> dict:
    out_a = store.add_output(store.create_run("a", "m"), item, img(1))
    out_b = store.add_output(store.create_run("b", "m"), item, img(2))
    return {"item_id": item, "system_a": "a", "output_a": out_a, "system_b": "b", "output_b": out_b}


def _rated(store: Store, rater: str, pair: dict, mode: str = "team") -> int:
    [aid] = store.assign_ratings(rater, [pair], mode=mode)
    return store.add_rating(aid, rater=rater, preference="A")


def test_an_old_database_with_local_ratings_migrates_and_flags_them(tmp_path):
    path = tmp_path / "v4.db"
    with Store(path) as store:
        item = add(store)
        for name in ("local", "rita"):
            store.add_user(name, "admin" if name == "local" else "rater", "pw-" + name * 3)
        pair = _pair(store, item)
        _rated(store, "local", pair)
        _rated(store, "rita", pair)
    old = Database(path)  # roll the file back to the schema of the fourth release
    old.execute("DROP VIEW ratings_full")
    for statement in (
        "DROP TABLE rater_exclusions",
        "DROP TABLE gold_items",
        "ALTER TABLE rating_assignments DROP COLUMN mode",
        "ALTER TABLE rating_assignments DROP COLUMN gold_id",
        "DELETE FROM _sqlite_migrations WHERE name = '0005_campaign_trust'",
    ):
        old.execute(statement)
    old.execute(
        "CREATE VIEW ratings_full AS SELECT r.*, a.rater, a.item_id, a.system_a, a.system_b "
        "FROM ratings r JOIN rating_assignments a ON a.id = r.assignment_id"
    )
    old.conn.commit()
    assert "mode" not in old["rating_assignments"].columns_dict
    old.close()
    store = Store(path)
    assert store.migrations[-1] == "0005_campaign_trust"
    modes = {r["rater"]: (r["mode"], r["gold_id"]) for r in store.ratings()}
    assert modes == {"local": ("local", None), "rita": ("team", None)}
    assert store.gold_items() == [] and store.excluded_raters() == {}


def test_gold_items_are_idempotent_and_checked(store):
    item = add(store)
    gid = store.add_gold_item(
        item, img(5), img(6), source="shapes-oracle", better_scores={"following": 5}
    )
    assert store.add_gold_item(item, img(5), img(6), source="shapes-oracle") == gid
    [gold] = store.gold_items()
    assert gold["better_following"] == 5 and gold["worse_following"] is None
    assert store.add_gold_item(item, gold["worse"], gold["better"], source="x") != gid  # by hash
    with pytest.raises(StoreInputError, match="two different images"):
        store.add_gold_item(item, img(5), img(5), source="x")
    with pytest.raises(ValueError, match="score"):
        store.add_gold_item(item, img(7), img(8), source="x", worse_scores={"following": 9})
    other = add(store, seed=1)
    store.add_user("rita", "rater", "pw-rita-rita")
    with pytest.raises(StoreInputError, match="belongs to item"):
        store.assign_ratings("rita", [{"item_id": other, "system_a": "g", "gold_id": gid}])
    [aid] = store.assign_ratings(
        "rita", [{"item_id": item, "system_a": "gold", "system_b": "gold-", "gold_id": gid}]
    )
    store.add_rating(aid, rater="rita", preference="B")
    [row] = store.ratings()
    assert row["gold_id"] == gid and row["mode"] == "team" and row["preference"] == "B"
    with pytest.raises(StoreInputError, match="mode must be one of"):
        store.assign_ratings("rita", [{"item_id": item, "system_a": "x"}], mode="solo")


def test_excluding_a_rater_is_logged_reversible_and_for_admins_only(store):
    for name, role in (("ada", "admin"), ("rita", "rater"), ("ann", "annotator")):
        store.add_user(name, role, f"pw-{name}-{name}")
    with pytest.raises(StoreInputError, match="only an active admin"):
        store.exclude_rater("rita", by="ann")
    store.exclude_rater("rita", by="ada", reason="3 to everything")
    assert store.excluded_raters()["rita"]["reason"] == "3 to everything"
    store.include_rater("rita", by="ada")
    assert store.excluded_raters() == {}
    store.exclude_rater("rita", by="ada")
    assert list(store.excluded_raters()) == ["rita"]
    assert [r["action"] for r in store.exclusion_log()] == ["exclude", "include", "exclude"]
    with store.db() as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM rater_exclusions")
