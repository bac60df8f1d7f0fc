"""The MRC Studio store: one SQLite database (via sqlite-utils) plus a folder of images.

Everything people and judges produce lives here: triplets, reward annotations with their
provenance, the reviewed label of each triplet and the full history of its changes,
benchmark runs with their output images and judge verdicts, blind human ratings, and users.
The schema is owned by :mod:`core.store.schema` (migrations in code); docs/store.md has the
table-by-table description.

Layout on disk::

    studio.db                         the database (WAL mode: also studio.db-wal, -shm)
    studio_images/ab/abcdef....png    images, named by core.images.image_hash (pixels)

Guarantees
    * WAL mode, ``synchronous=NORMAL``, a busy timeout, and one connection per thread, reused
      by every call on it and never shared (safe from Gradio's worker threads and from several
      processes; nested ``db()``/``transaction()`` blocks share it, a nested transaction is a
      savepoint), plus one idle keep-alive connection held until ``close()`` so the WAL is not
      deleted and recreated when thread connections come and go.
    * Writes are transactions (``BEGIN IMMEDIATE``): all or nothing. Bad input -- a corrupt
      image, a score outside [0, 5], an unknown perspective -- raises before anything is
      written, so the store is left exactly as it was (at most an unreferenced image file).
    * Label edits use optimistic concurrency (``expected_version``): a stale writer gets
      :class:`ConflictError`, never a lost update; every change is in ``label_history``.
    * Content addressing makes adds idempotent: triplet ids hash (original, edited,
      instruction); annotations have an idempotency key (triplet, judge, prompt version, task).

API (all on :class:`Store`)
    Opening      ``Store(path, busy_timeout=30.0)`` (also ``with Store(path) as store:``),
                 ``.close()``, ``.db()``, ``.transaction()``, ``.migrations``, ``.count(table)``
    Images       ``.put_image(src, mask=False) -> hash``, ``.image(hash)``, ``.image_path(hash)``
    Triplets     ``.add_triplet(original, edited, instruction, *, category, target, mask, split,
                 source, external_id, meta) -> id``, ``.add_triplets(items) -> ids``,
                 ``.get_triplet(id)``, ``.list_triplets(**filters)``, ``.count_triplets(...)``
    Annotations  ``.add_annotation(triplet_id, *, kind, rewards, judge_model, prompt_version,
                 task, status, failure_reason, raw, user, key, meta) -> id``,
                 ``.add_annotations(items)``, ``.find_annotation(key)``, ``.get_annotation(id)``,
                 ``.annotations(...)``; :func:`annotation_key`
    Labels       ``.set_label_from_annotation(id, *, user, replace_pending)``,
                 ``.set_labels_from_annotations(ids, ...)``, ``.get_label(tid)``,
                 ``.update_label(tid, rewards, *, user, expected_version, status, note,
                 seconds)``,
                 ``.history(tid)``, ``.acquire_lock(tid, user)``, ``.release_lock(tid, user)``,
                 ``.next_for_review(user)``, ``.review_counts()``, ``.export_labels()``,
                 ``.export_rewardedit()``
    Benchmark    ``.create_run(name, model, *, settings, seed)``, ``.get_run``, ``.list_runs``,
                 ``.add_output(run_id, item_id, image, *, seed)``, ``.outputs(run_id)``,
                 ``.add_verdict(output_id, *, judge_model, prompt_version, verdict)``,
                 ``.verdicts(...)``
    Ratings      ``.assign_ratings(rater, items, *, seed)``, ``.next_assignment(rater)``,
                 ``.add_rating(assignment_id, *, rater, scores_a, scores_b, preference,
                 seconds)``, ``.skip_assignment``, ``.ratings(...)``; gold pairs
                 ``.add_gold_item(item_id, better, worse, *, source, better_scores,
                 worse_scores)``, ``.gold_items()``; ``.exclude_rater(rater, *, by, reason)``,
                 ``.include_rater``, ``.excluded_raters()``, ``.exclusion_log()``
    Users        ``.add_user(name, role, password)``, ``.get_user``, ``.list_users``,
                 ``.set_password``, ``.set_role``, ``.set_active``, ``.verify_password``

Errors: :class:`StoreInputError` (a ValueError), :class:`NotFoundError` (a LookupError),
:class:`ConflictError` and its subclass :class:`LockedError`; image problems raise
:class:`core.images.ImageError` and reward problems :class:`core.rewards.RewardValidationError`
(both ValueErrors).
"""

from __future__ import annotations

from .annotations import annotation_key
from .bench import BenchMixin
from .errors import (
    ConflictError,
    LockedError,
    NotFoundError,
    StoreBusyError,
    StoreError,
    StoreInputError,
)
from .label_export import ExportedLabel, LabelExportMixin
from .labels import LabelRecord, LabelsMixin
from .locks import DEFAULT_LOCK_SECONDS, LocksMixin
from .ratings import RatingsMixin
from .schema import KINDS, MIGRATIONS, REVIEW_STATUSES, ROLES, TABLES
from .triplets import TripletsMixin, triplet_id
from .users import UsersMixin, check_password, hash_password


class Store(
    TripletsMixin, LabelsMixin, LocksMixin, LabelExportMixin, BenchMixin, RatingsMixin, UsersMixin
):
    """The store; see the module docstring for the API and guarantees."""

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"


__all__ = [
    "DEFAULT_LOCK_SECONDS",
    "KINDS",
    "MIGRATIONS",
    "REVIEW_STATUSES",
    "ROLES",
    "TABLES",
    "ConflictError",
    "ExportedLabel",
    "LabelRecord",
    "LockedError",
    "NotFoundError",
    "Store",
    "StoreBusyError",
    "StoreError",
    "StoreInputError",
    "annotation_key",
    "check_password",
    "hash_password",
    "triplet_id",
]
