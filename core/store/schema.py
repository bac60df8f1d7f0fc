"""The store's schema, as an ordered list of migrations (sqlite-utils ``Migrations``).

Each migration is a list of SQL statements applied in one transaction together with its row
in ``_sqlite_migrations``; :meth:`Store.__init__` applies the pending ones under ``BEGIN
IMMEDIATE``, so two processes opening an old database at the same time cannot both migrate
it. Never edit a migration that has shipped: append a new one (``0006_...``).

Conventions: timestamps are ISO-8601 UTC strings with microseconds (they sort as text);
JSON columns are TEXT checked with ``json_valid``; the three perspectives are stored as
columns ``<perspective> REAL`` (score in [0, 5]) and ``<perspective>_text TEXT`` (failure
points) so labels can be queried and aggregated in plain SQL. Enumerations and ranges are
CHECK constraints, so even a write that bypasses the Python API cannot store a score of 7
or a status of "done-ish".
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database, Migrations

from core.rewards import PERSPECTIVES

MIGRATIONS = Migrations("mrc_store")

KINDS = ("judge", "human", "oracle")  # who produced an annotation
TASKS = ("annotate", "evaluate")  # what the annotation was made for
RESULT_STATUSES = ("ok", "failed")  # a judge call either gave scores or failed
REVIEW_STATUSES = ("pending", "accepted", "fixed", "rejected", "skipped")
HISTORY_ACTIONS = ("create", "edit", "review", "reannotate")
ROLES = ("admin", "annotator", "rater")
PREFERENCES = ("A", "B", "tie", "both_bad")
SIDES = ("L", "R")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _score_columns(prefix: str = "", *, with_text: bool = True, required: bool = False) -> str:
    """``following REAL CHECK (...), following_text TEXT, ...`` for the three perspectives."""
    cols = []
    for p in PERSPECTIVES:
        null = " NOT NULL" if required else ""
        cols.append(f"{prefix}{p} REAL{null} CHECK ({prefix}{p} BETWEEN 0 AND 5)")
        if with_text:
            default = " NOT NULL DEFAULT ''" if required else ""
            cols.append(f"{prefix}{p}_text TEXT{default}")
    return ",\n  ".join(cols)


def _result_check(score_cols: list[str]) -> str:
    """ok rows carry every score and no failure reason; failed rows the reverse."""
    all_set = " AND ".join(f"{c} IS NOT NULL" for c in score_cols)
    none_set = " AND ".join(f"{c} IS NULL" for c in score_cols)
    return (
        f"CHECK ((status = 'ok' AND {all_set} AND failure_reason IS NULL) OR "
        f"(status = 'failed' AND {none_set} AND length(trim(failure_reason)) > 0))"
    )


def _append_only(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: rows cannot be changed'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: rows cannot be deleted'); END",
    ]


def _migration(name: str, statements: list[str]) -> Callable[[Database], None]:
    def apply(db: Database) -> None:
        for sql in statements:
            db.execute(sql)

    apply.__name__ = name
    MIGRATIONS(name=name)(apply)
    return apply


_migration(
    "0001_core",
    [
        # Content-addressed image files: <db_dir>/<db_stem>_images/<hash[:2]>/<hash>.png
        """CREATE TABLE images (
  hash TEXT PRIMARY KEY CHECK (length(hash) = 64),
  mode TEXT NOT NULL CHECK (mode IN ('RGB', 'L')),
  width INTEGER NOT NULL CHECK (width > 0),
  height INTEGER NOT NULL CHECK (height > 0),
  bytes INTEGER NOT NULL CHECK (bytes > 0),
  created_at TEXT NOT NULL
)""",
        """CREATE TABLE triplets (
  id TEXT PRIMARY KEY,
  instruction TEXT NOT NULL CHECK (length(trim(instruction)) > 0),
  category TEXT,
  original TEXT NOT NULL REFERENCES images(hash),
  edited TEXT REFERENCES images(hash),
  target TEXT REFERENCES images(hash),
  mask TEXT REFERENCES images(hash),
  split TEXT NOT NULL CHECK (length(trim(split)) > 0),
  source TEXT NOT NULL DEFAULT '',
  external_id TEXT,
  meta TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(meta)),
  created_at TEXT NOT NULL
)""",
        "CREATE INDEX triplets_split ON triplets(split, category)",
        "CREATE INDEX triplets_source ON triplets(source, external_id)",
        f"""CREATE TABLE annotations (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL,
  triplet_id TEXT NOT NULL REFERENCES triplets(id),
  kind TEXT NOT NULL CHECK (kind IN {_in(KINDS)}),
  task TEXT NOT NULL CHECK (task IN {_in(TASKS)}),
  judge_model TEXT,
  prompt_version TEXT,
  user TEXT,
  status TEXT NOT NULL CHECK (status IN {_in(RESULT_STATUSES)}),
  failure_reason TEXT,
  {_score_columns()},
  raw TEXT,
  meta TEXT NOT NULL DEFAULT '{{}}' CHECK (json_valid(meta)),
  created_at TEXT NOT NULL,
  CHECK (kind = 'human' OR judge_model IS NOT NULL),
  {_result_check(list(PERSPECTIVES))}
)""",
        # One ok annotation per idempotency key; failed attempts are kept, one row each.
        "CREATE UNIQUE INDEX annotations_key_ok ON annotations(key) WHERE status = 'ok'",
        "CREATE INDEX annotations_key ON annotations(key)",
        "CREATE INDEX annotations_triplet ON annotations(triplet_id)",
        f"""CREATE TABLE labels (
  triplet_id TEXT PRIMARY KEY REFERENCES triplets(id),
  version INTEGER NOT NULL CHECK (version >= 1),
  status TEXT NOT NULL CHECK (status IN {_in(REVIEW_STATUSES)}),
  origin TEXT NOT NULL CHECK (origin IN {_in(KINDS)}),
  annotation_id INTEGER REFERENCES annotations(id),
  {_score_columns(required=True)},
  note TEXT,
  updated_by TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  locked_by TEXT,
  locked_until TEXT,
  CHECK ((locked_by IS NULL) = (locked_until IS NULL))
)""",
        "CREATE INDEX labels_status ON labels(status)",
        f"""CREATE TABLE label_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  triplet_id TEXT NOT NULL REFERENCES triplets(id),
  version INTEGER NOT NULL CHECK (version >= 1),
  user TEXT NOT NULL,
  at TEXT NOT NULL,
  action TEXT NOT NULL CHECK (action IN {_in(HISTORY_ACTIONS)}),
  before TEXT CHECK (before IS NULL OR json_valid(before)),
  after TEXT NOT NULL CHECK (json_valid(after)),
  note TEXT,
  UNIQUE (triplet_id, version)
)""",
        *_append_only("label_history"),
        f"""CREATE TABLE users (
  name TEXT PRIMARY KEY CHECK (length(trim(name)) > 0),
  role TEXT NOT NULL CHECK (role IN {_in(ROLES)}),
  password_hash TEXT NOT NULL,
  active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
  created_at TEXT NOT NULL
)""",
    ],
)

_VERDICT_SCORES = [f"{p}{s}" for p in PERSPECTIVES for s in ("", "_yes")]

_migration(
    "0002_benchmark",
    [
        """CREATE TABLE runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE CHECK (length(trim(name)) > 0),
  model TEXT NOT NULL CHECK (length(trim(model)) > 0),
  settings TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
  seed INTEGER NOT NULL,
  created_by TEXT,
  created_at TEXT NOT NULL
)""",
        """CREATE TABLE run_outputs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id INTEGER NOT NULL REFERENCES runs(id),
  item_id TEXT NOT NULL REFERENCES triplets(id),
  image TEXT NOT NULL REFERENCES images(hash),
  seed INTEGER NOT NULL,
  seconds REAL CHECK (seconds IS NULL OR seconds >= 0),
  meta TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(meta)),
  created_at TEXT NOT NULL,
  UNIQUE (run_id, item_id, seed)
)""",
        f"""CREATE TABLE verdicts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  output_id INTEGER NOT NULL REFERENCES run_outputs(id),
  judge_model TEXT NOT NULL,
  prompt_version TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN {_in(RESULT_STATUSES)}),
  failure_reason TEXT,
  {", ".join(f"{p}_yes INTEGER CHECK ({p}_yes IN (0, 1))" for p in PERSPECTIVES)},
  {_score_columns()},
  raw TEXT,
  created_at TEXT NOT NULL,
  {_result_check(_VERDICT_SCORES)}
)""",
        "CREATE UNIQUE INDEX verdicts_ok ON verdicts(output_id, judge_model, prompt_version) "
        "WHERE status = 'ok'",
        "CREATE INDEX verdicts_output ON verdicts(output_id)",
        "CREATE INDEX run_outputs_run ON run_outputs(run_id, item_id)",
    ],
)

_migration(
    "0003_ratings",
    [
        # A blinded comparison (or single output) shown to one rater. system_* are hidden
        # from the rater; a_side says on which side system A's output was shown.
        f"""CREATE TABLE rating_assignments (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  rater TEXT NOT NULL REFERENCES users(name),
  item_id TEXT NOT NULL REFERENCES triplets(id),
  system_a TEXT NOT NULL,
  output_a INTEGER REFERENCES run_outputs(id),
  system_b TEXT,
  output_b INTEGER REFERENCES run_outputs(id),
  a_side TEXT NOT NULL CHECK (a_side IN {_in(SIDES)}),
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'skipped')),
  created_at TEXT NOT NULL,
  done_at TEXT,
  CHECK (system_b IS NOT NULL OR output_b IS NULL)
)""",
        "CREATE UNIQUE INDEX rating_assignments_unique ON rating_assignments"
        "(rater, item_id, system_a, ifnull(system_b, ''))",
        "CREATE INDEX rating_assignments_queue ON rating_assignments(rater, status)",
        f"""CREATE TABLE ratings (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  assignment_id INTEGER NOT NULL UNIQUE REFERENCES rating_assignments(id),
  {_score_columns("a_", with_text=False)},
  {_score_columns("b_", with_text=False)},
  preference TEXT CHECK (preference IS NULL OR preference IN {_in(PREFERENCES)}),
  seconds REAL CHECK (seconds IS NULL OR seconds >= 0),
  created_at TEXT NOT NULL
)""",
        *_append_only("ratings"),
        """CREATE VIEW ratings_full AS
SELECT r.id, r.assignment_id, a.rater, a.item_id, a.system_a, a.output_a, a.system_b,
       a.output_b, a.a_side, r.a_following, r.a_preserving, r.a_quality, r.b_following,
       r.b_preserving, r.b_quality, r.preference, r.seconds, r.created_at
FROM ratings r JOIN rating_assignments a ON a.id = r.assignment_id""",
    ],
)

_migration(
    "0004_label_seconds",
    [
        # How long the reviewer held the item before saving (None: not measured, e.g. a
        # machine label or a save made before this migration).
        "ALTER TABLE label_history ADD COLUMN seconds REAL CHECK (seconds IS NULL OR seconds >= 0)",
    ],
)

_migration(
    "0005_campaign_trust",
    [
        # Gold pairs: two images for one benchmark item whose answer is known (e.g. the exact
        # Shapes target against a seeded corruption of it, scored by the Shapes oracle).
        # ``better`` is the known preference; the scores are the known ones, if any.
        f"""CREATE TABLE gold_items (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  item_id TEXT NOT NULL REFERENCES triplets(id),
  better TEXT NOT NULL REFERENCES images(hash),
  worse TEXT NOT NULL REFERENCES images(hash),
  {_score_columns("better_", with_text=False)},
  {_score_columns("worse_", with_text=False)},
  source TEXT NOT NULL CHECK (length(trim(source)) > 0),
  created_at TEXT NOT NULL,
  CHECK (better != worse),
  UNIQUE (item_id, better, worse)
)""",
        # A gold assignment shows a gold pair (system_a is its better side, output ids NULL).
        "ALTER TABLE rating_assignments ADD COLUMN gold_id INTEGER REFERENCES gold_items(id)",
        # 'local': made in the studio's local single-user mode, kept out of the team's tables.
        "ALTER TABLE rating_assignments ADD COLUMN mode TEXT NOT NULL DEFAULT 'team' "
        "CHECK (mode IN ('team', 'local'))",
        # Before this migration, local-mode ratings were those of the studio's built-in
        # single-user identity (studio.auth.LOCAL_USER), which can never log in to a served
        # studio: flag them.
        "UPDATE rating_assignments SET mode = 'local' WHERE rater = 'local'",
        # Exclusions of raters from the result tables, as an append-only log: a rater is
        # excluded while their newest row says so; including them again appends a row.
        """CREATE TABLE rater_exclusions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  rater TEXT NOT NULL REFERENCES users(name),
  action TEXT NOT NULL CHECK (action IN ('exclude', 'include')),
  by_user TEXT NOT NULL REFERENCES users(name),
  reason TEXT NOT NULL DEFAULT '',
  at TEXT NOT NULL
)""",
        "CREATE INDEX rater_exclusions_rater ON rater_exclusions(rater, id)",
        *_append_only("rater_exclusions"),
        "DROP VIEW ratings_full",
        """CREATE VIEW ratings_full AS
SELECT r.id, r.assignment_id, a.rater, a.item_id, a.system_a, a.output_a, a.system_b,
       a.output_b, a.a_side, r.a_following, r.a_preserving, r.a_quality, r.b_following,
       r.b_preserving, r.b_quality, r.preference, r.seconds, r.created_at, a.gold_id, a.mode
FROM ratings r JOIN rating_assignments a ON a.id = r.assignment_id""",
    ],
)

TABLES = (
    "images",
    "triplets",
    "annotations",
    "labels",
    "label_history",
    "users",
    "runs",
    "run_outputs",
    "verdicts",
    "rating_assignments",
    "ratings",
    "gold_items",
    "rater_exclusions",
)
