"""Import and export: RewardEdit-20K JSON, Shapes folders, and corrected labels for training.

**RewardEdit-20K in.** The paper's file maps a triplet id to three ``{"Score", "Negative Prompt"}``
objects (following, preserving, quality; see :mod:`core.rewards`). It holds no images, so
:func:`import_rewardedit` also needs the image folder. For a triplet id ``ID`` it looks for

* ``IMAGES/ID_0.<ext>`` and ``IMAGES/ID_1.<ext>`` -- the InstructPix2Pix layout, where ids look
  like ``<prompt folder>/<seed>`` and the folder holds ``<seed>_0.jpg`` (original) and
  ``<seed>_1.jpg`` (edited) next to a ``prompt.json`` whose ``"edit"`` is the instruction;
* ``IMAGES/ID/original.<ext>`` and ``IMAGES/ID/edited.<ext>`` (with an optional
  ``IMAGES/ID/prompt.json`` or ``instruction.txt``);

with ``<ext>`` one of jpg, jpeg, png, webp. ``--instructions FILE`` (JSON ``{id: instruction}``)
overrides the per-folder instruction. An id whose files or instruction cannot be found, whose
JSON entry is malformed, or whose image is unreadable is *reported* with its reason and skipped;
nothing is dropped silently. The paper's labels are stored as judge annotations
(``judge_model`` from ``--label-model``, default ``gpt-4o``, ``prompt_version`` ``rewardedit-20k``)
and become the triplets' pending labels, ready for review.

**Labels out.** :func:`corrected_labels` is the label each triplet trains with: the store's
label row, where a human correction (review status ``fixed``) wins over the judge's values and
an ``accepted`` label names its reviewer; rejected triplets are left out. Every record carries
its provenance (origin human/judge/oracle, review status, reviewer, judge model, prompt version,
version, time). :func:`export_labels` writes them as JSON, CSV, Parquet, a Hugging Face
``datasets`` dataset (``save_to_disk``; with the two images as ``Image`` columns), or the paper's
RewardEdit-20K JSON (keyed by the original id when the triplet was imported from one).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.images import ImageError
from core.rewards import (
    PERSPECTIVES,
    Rewards,
    RewardValidationError,
    load_rewardedit,
    write_rewardedit,
)

EXTS = ("jpg", "jpeg", "png", "webp")
REWARDEDIT_SOURCE = "rewardedit-20k"
REWARDEDIT_VERSION = "rewardedit-20k"
FORMATS = ("json", "csv", "parquet", "hf", "rewardedit")
CHUNK = 256  # triplets per store transaction while importing


@dataclass
class ImportReport:
    imported: int = 0  # triplets added or already present
    new: int = 0  # of those, triplets the store did not hold before
    labels: int = 0  # label annotations stored
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)

    def text(self) -> str:
        present = self.imported - self.new
        lines = [
            f"imported {self.imported} triplets ({self.new} new, {present} already in the store), "
            f"{self.labels} labels; skipped {len(self.skipped)}"
        ]
        lines += [f"  skipped {tid}: {why}" for tid, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def _find(folder: Path, name: str) -> Path | None:
    for ext in EXTS:
        for cand in (folder / f"{name}.{ext}", folder / f"{name}.{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def _instruction_from(folder: Path) -> str | None:
    pj = folder / "prompt.json"
    if pj.is_file():
        try:
            doc = json.loads(pj.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{pj} is not valid JSON ({e})") from None
        for key in ("edit", "instruction"):
            if isinstance(doc, dict) and isinstance(doc.get(key), str) and doc[key].strip():
                return doc[key]
    txt = folder / "instruction.txt"
    if txt.is_file():
        return txt.read_text(encoding="utf-8").strip() or None
    return None


def resolve_rewardedit_item(
    images: Path, tid: str, instructions: Mapping[str, str]
) -> dict[str, Any]:
    """Files and instruction of one RewardEdit id (see the module docstring). Raises ValueError."""
    if ".." in Path(tid).parts or Path(tid).is_absolute():
        raise ValueError("the id is not a relative path inside the image folder")
    base = images / tid
    folder = base.parent
    original, edited = _find(folder, base.name + "_0"), _find(folder, base.name + "_1")
    if original is None or edited is None:
        folder = base
        original, edited = _find(folder, "original"), _find(folder, "edited")
    if original is None or edited is None:
        raise ValueError(
            f"no image pair found: looked for {tid}_0/_1.<ext> and {tid}/original|edited.<ext> "
            f"under {images}"
        )
    instruction = instructions.get(tid) or _instruction_from(folder)
    if not instruction:
        raise ValueError(
            "no instruction: give --instructions or put a prompt.json beside the images"
        )
    return {"original": original, "edited": edited, "instruction": instruction}


def import_rewardedit(
    store: Any,
    json_path: str | Path,
    images: str | Path,
    *,
    instructions: str | Path | Mapping[str, str] | None = None,
    labels: bool = True,
    label_model: str = "gpt-4o",
    split: str = "train",
    progress: bool = True,
) -> ImportReport:
    """Add RewardEdit-20K triplets (and, with ``labels``, the paper's labels) to ``store``."""
    from tqdm.auto import tqdm

    good, bad = load_rewardedit(Path(json_path))
    report = ImportReport(skipped=[(m.triplet_id, m.reason) for m in bad])
    if instructions is None:
        instr: Mapping[str, str] = {}
    elif isinstance(instructions, Mapping):
        instr = instructions
    else:
        try:
            instr = json.loads(Path(instructions).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the instructions file {instructions}: {e}") from None
        if not isinstance(instr, dict):
            raise ValueError(f"{instructions} must be a JSON object {{triplet_id: instruction}}")
    images = Path(images)
    if not images.is_dir():
        raise ValueError(f"the image folder {images} does not exist")
    items, rewards = [], []
    for tid, rw in good.items():
        try:
            found = resolve_rewardedit_item(images, tid, instr)
        except ValueError as e:
            report.skipped.append((tid, str(e)))
            continue
        items.append({**found, "split": split, "source": REWARDEDIT_SOURCE, "external_id": tid})
        rewards.append(rw)
    bar = tqdm(
        total=len(items), desc="importing RewardEdit-20K", unit="triplet", disable=not progress
    )
    for start in range(0, len(items), CHUNK):
        chunk, chunk_rw = items[start : start + CHUNK], rewards[start : start + CHUNK]
        before = store.count_triplets()
        ids = _add_chunk(store, chunk, report)
        report.imported += sum(1 for i in ids if i is not None)
        report.new += store.count_triplets() - before
        if labels:
            anns = [
                {"triplet_id": tid, "kind": "judge", "rewards": rw, "judge_model": label_model,
                 "prompt_version": REWARDEDIT_VERSION, "meta": {"source": str(json_path)}}
                for tid, rw in zip(ids, chunk_rw) if tid is not None
            ]  # fmt: skip
            if anns:
                ann_ids = store.add_annotations(anns)
                store.set_labels_from_annotations(ann_ids, user=f"import:{REWARDEDIT_SOURCE}")
                report.labels += len(ann_ids)
        bar.update(len(chunk))
    bar.close()
    return report


def _add_chunk(store: Any, chunk: list[dict[str, Any]], report: ImportReport) -> list[str | None]:
    """Add a chunk in one transaction; on a bad image, item by item so the rest still lands."""
    try:
        return list(store.add_triplets(chunk, progress=False))
    except (ImageError, ValueError):
        out: list[str | None] = []
        for item in chunk:
            try:
                out.append(store.add_triplets([item], progress=False)[0])
            except (ImageError, ValueError) as e:
                report.skipped.append((item["external_id"], str(e)))
                out.append(None)
        return out


# -- Shapes folders --------------------------------------------------------------------------


def import_shapes_folder(store: Any, folder: str | Path, *, progress: bool = True) -> int:
    """Add both splits of a Shapes folder (``python -m data synth``) to the store; returns the
    number of triplets in the folder. Idempotent (content-addressed triplets). Benchmark items
    have no edited image; ``meta`` keeps the scene and edit the oracle needs, plus the injected
    corruptions of training triplets (for analysis). The record layout lives in
    :mod:`data.shapes.to_store`; no labels are added (annotate them with a judge)."""
    from data.shapes.to_store import add_shapes_folder

    return add_shapes_folder(store, folder, progress=progress)["triplets"]


# -- export ----------------------------------------------------------------------------------


def corrected_labels(
    store: Any, *, split: str | None = None, reviewed_only: bool = False
) -> list[dict[str, Any]]:
    """One record per labelled triplet: the label it trains with, plus provenance."""
    labels = store.export_labels(split=split, include_unreviewed=not reviewed_only)
    cols = ("id", "external_id", "instruction", "category", "split", "source", "original", "edited")
    with store.db() as db:
        triplets = {
            r[0]: r for r in db.execute(f"SELECT {', '.join(cols)} FROM triplets").fetchall()
        }
    out = []
    for tid, lab in labels.items():
        rec: dict[str, Any] = dict(zip(("triplet_id", *cols[1:]), triplets[tid]))
        for p in PERSPECTIVES:
            rec[p] = lab.rewards[p].score
            rec[f"{p}_text"] = lab.rewards[p].text
        rec.update(
            origin=lab.origin,
            review_status=lab.status,
            reviewed_by=lab.reviewed_by,
            judge_model=lab.judge_model,
            prompt_version=lab.prompt_version,
            label_version=lab.version,
            updated_at=lab.updated_at,
        )
        out.append(rec)
    return out


def export_labels(
    store: Any, out: str | Path, fmt: str, *, split: str | None = None, reviewed_only: bool = False
) -> int:
    """Write the corrected labels to ``out`` in ``fmt`` (see FORMATS); returns the count."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    records = corrected_labels(store, split=split, reviewed_only=reviewed_only)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "rewardedit":
        keyed: dict[str, Rewards] = {}
        for r in records:
            key = r["external_id"] or r["triplet_id"]
            if key in keyed:
                raise ValueError(f"two triplets export under the same id {key!r}")
            keyed[key] = Rewards.from_scores(
                [r[p] for p in PERSPECTIVES], [r[f"{p}_text"] for p in PERSPECTIVES]
            )
        write_rewardedit(keyed, out)
    elif fmt == "json":
        out.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    else:
        import pandas as pd

        frame = pd.DataFrame.from_records(records, columns=_columns())
        if fmt == "csv":
            frame.to_csv(out, index=False)
        elif fmt == "parquet":
            frame.to_parquet(out, index=False)
        else:
            import datasets

            frame["original_image"] = [str(store.image_path(h)) for h in frame["original"]]
            frame["edited_image"] = [str(store.image_path(h)) for h in frame["edited"]]
            ds = datasets.Dataset.from_pandas(frame, preserve_index=False)
            ds = ds.cast_column("original_image", datasets.Image()).cast_column(
                "edited_image", datasets.Image()
            )
            ds.save_to_disk(str(out))
    return len(records)


def _columns() -> list[str]:
    cols = [
        "triplet_id",
        "external_id",
        "instruction",
        "category",
        "split",
        "source",
        "original",
        "edited",
    ]
    for p in PERSPECTIVES:
        cols += [p, f"{p}_text"]
    return cols + ["origin", "review_status", "reviewed_by", "judge_model", "prompt_version",
                   "label_version", "updated_at"]  # fmt: skip


# -- CLI -------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    """Register ``import-rewardedit`` and ``export`` with the ``python -m data`` CLI."""
    imp = subparsers.add_parser("import-rewardedit", help="import RewardEdit-20K JSON + images")
    imp.add_argument("json", help="the RewardEdit-20K JSON file")
    imp.add_argument("--images", required=True, help="the image folder (layouts: data/interop.py)")
    imp.add_argument("--store", required=True)
    imp.add_argument("--instructions", help="JSON {triplet_id: instruction}")
    imp.add_argument("--no-labels", action="store_true", help="import the triplets only")
    imp.add_argument("--label-model", default="gpt-4o", help="judge model the labels came from")
    imp.add_argument("--split", default="train")
    imp.set_defaults(func=_import_cli, handler=_import_cli)
    exp = subparsers.add_parser("export", help="export corrected labels (human corrections win)")
    exp.add_argument("--store", required=True)
    exp.add_argument("--out", required=True, help="output file (hf: a folder)")
    exp.add_argument("--format", choices=FORMATS, default="json")
    exp.add_argument("--split")
    exp.add_argument("--reviewed-only", action="store_true", help="only accepted or fixed labels")
    exp.set_defaults(func=_export_cli, handler=_export_cli)


def _import_cli(args: argparse.Namespace) -> int:
    from core.store import Store

    try:
        report = import_rewardedit(
            Store(args.store), args.json, args.images, instructions=args.instructions,
            labels=not args.no_labels, label_model=args.label_model, split=args.split,
        )  # fmt: skip
    except (ValueError, RewardValidationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.text())
    return 0


def _export_cli(args: argparse.Namespace) -> int:
    from core.store import Store

    n = export_labels(
        Store(args.store), args.out, args.format, split=args.split, reviewed_only=args.reviewed_only
    )
    print(f"wrote {n} labels to {args.out} ({args.format})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m data.interop import-rewardedit|export ...`` (same as ``python -m data ...``)."""
    ap = argparse.ArgumentParser(prog="python -m data.interop")
    add_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
