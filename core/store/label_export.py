"""The training labels out of the store: the label row is the truth, with its provenance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.rewards import Rewards, dump_rewardedit

from .base import rewards_from_row

REVIEWED = ("accepted", "fixed")


@dataclass(frozen=True)
class ExportedLabel:
    """A label for training, with where it came from."""

    triplet_id: str
    rewards: Rewards
    origin: str  # human when a reviewer changed the values
    status: str
    version: int
    reviewed_by: str | None  # the reviewer for accepted/fixed labels, else None
    annotation_id: int | None
    judge_model: str | None
    prompt_version: str | None
    updated_at: str


class LabelExportMixin:
    """Export labels for training; mixed into :class:`core.store.Store`."""

    def export_labels(
        self, *, split: str | None = None, include_unreviewed: bool = True
    ) -> dict[str, ExportedLabel]:
        """The training labels, keyed by triplet id, in insertion order.

        The label row is the truth: a human correction (``fixed``) replaces the judge's values
        and is exported with origin ``human``; ``accepted`` labels keep their machine origin
        and name the reviewer; ``rejected`` triplets are left out; ``pending``/``skipped``
        (unreviewed machine labels) are included unless ``include_unreviewed`` is False.
        """
        statuses = ["accepted", "fixed"] + (["pending", "skipped"] if include_unreviewed else [])
        sql = (
            "SELECT l.*, a.judge_model, a.prompt_version FROM labels l "
            "JOIN triplets t ON t.id = l.triplet_id "
            "LEFT JOIN annotations a ON a.id = l.annotation_id "
            f"WHERE l.status IN ({', '.join('?' * len(statuses))})"
        )
        params: list[Any] = list(statuses)
        if split is not None:
            sql, params = sql + " AND t.split = ?", [*params, split]
        with self.db() as db:
            rows = list(db.query(sql + " ORDER BY t.rowid", params))
        return {
            r["triplet_id"]: ExportedLabel(
                triplet_id=r["triplet_id"],
                rewards=rewards_from_row(r),
                origin=r["origin"],
                status=r["status"],
                version=r["version"],
                reviewed_by=r["updated_by"] if r["status"] in REVIEWED else None,
                annotation_id=r["annotation_id"],
                judge_model=r["judge_model"],
                prompt_version=r["prompt_version"],
                updated_at=r["updated_at"],
            )
            for r in rows
        }

    def export_rewardedit(self, **filters: Any) -> dict[str, list[dict[str, Any]]]:
        """:meth:`export_labels` in the paper's RewardEdit-20K JSON shape."""
        return dump_rewardedit({k: v.rewards for k, v in self.export_labels(**filters).items()})
