"""The four training-data sources; each returns :class:`~train.datasets.SourceData`.

See :mod:`train.datasets` for what an example is and how bad entries are handled; the layouts:

``shapes``      ``data.shapes.load_split`` of a ``python -m data synth`` folder;
``hf``          ``datasets.load_from_disk`` / ``load_dataset`` with column flags, rewards joined
                from a RewardEdit-20K JSON on ``id_column`` (or the row number);
``rewardedit``  RewardEdit-20K JSON + images under ``data_dir`` at ``original_pattern`` /
                ``edited_pattern`` and the instruction at ``prompt_pattern`` (fields ``{id}``,
                ``{dir}`` = the id's folder part, ``{name}`` = its last part); the defaults follow
                InstructPix2Pix's generated-data layout (``<dir>/prompt.json`` with key "edit");
``store``       ``core.store.Store.export_labels``: the reviewed label wins, rejected triplets are
                left out, provenance per label.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.rewards import Rewards, RewardValidationError, load_rewardedit
from train.datasets import (
    BadDataError,
    BadItem,
    EditExample,
    HFImage,
    PathImage,
    SourceData,
)


def load_source(cfg: Any) -> SourceData:
    """The examples of ``cfg.data`` (a :class:`~train.config.TrainConfig`), before scanning."""
    loaders = {"shapes": _shapes, "hf": _hf, "rewardedit": _rewardedit, "store": _store}
    data = loaders[cfg.data](cfg)
    if cfg.max_train_samples:
        data.examples = data.examples[: cfg.max_train_samples]
    return data


def select_for_stage(data: SourceData, stage: int) -> tuple[list[EditExample], int]:
    """Stage 2 trains on labelled examples only; returns them and how many were left out."""
    if stage != 2:
        return list(data.examples), 0
    labelled = [ex for ex in data.examples if ex.rewards is not None]
    return labelled, len(data.examples) - len(labelled)


def _shapes(cfg: Any) -> SourceData:
    """A ``python -m data synth`` folder through ``data.shapes.load_split``.

    Image files are checked by :func:`scan` (per example, under the bad-data policy), not by
    ``load_split``. ``load_split`` refuses a whole manifest with one malformed line (e.g. a score
    of 7); under ``on_bad_data="skip"`` the lines are then read one by one, following the
    manifest format documented in ``data.shapes.folder``, and the malformed ones reported.
    """
    from data.shapes.folder import ShapesFolderError, load_split

    root = Path(cfg.data_dir)
    info = {"source": "shapes", "folder": str(root), "split": cfg.split}
    try:
        items = load_split(root, cfg.split, check_files=False)
    except ShapesFolderError as e:
        if cfg.on_bad_data == "stop":
            raise BadDataError(BadItem(f"{root}/{cfg.split}", "bad_record", str(e))) from e
        return _shapes_by_line(root, cfg.split, info)
    examples = []
    for it in items:
        if it.edited is None:
            raise ValueError(
                f"Split {cfg.split!r} of {root} has no edited images (the benchmark split is for "
                "evaluation); train on --split train."
            )
        examples.append(
            EditExample(
                it.id,
                it.instruction,
                PathImage(it.original),
                PathImage(it.edited),
                it.rewards,
                {"origin": "oracle"} if it.rewards is not None else {},
            )
        )
    return SourceData(examples, [], info)


def _shapes_by_line(root: Path, split: str, info: dict[str, Any]) -> SourceData:
    folder = root / split
    examples, bad = [], []
    lines = (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rid = f"line {lineno}"
        try:
            rec = json.loads(line)
            rid = str(rec["id"])
            rewards = Rewards.from_dict(rec["rewards"]) if rec.get("rewards") is not None else None
            ex = EditExample(
                rid,
                str(rec["instruction"]),
                PathImage(folder / rec["original"]),
                PathImage(folder / rec["edited"]),
                rewards,
                {"origin": "oracle"} if rewards is not None else {},
            )
        except RewardValidationError as e:
            bad.append(BadItem(rid, "bad_label", str(e)))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            bad.append(BadItem(rid, "bad_record", f"manifest line {lineno} is malformed: {e!r}"))
        else:
            examples.append(ex)
    return SourceData(examples, bad, info)


def _hf(cfg: Any) -> SourceData:
    import datasets

    ds, where = _open_hf(cfg)
    cols = [cfg.original_image_column, cfg.edit_prompt_column, cfg.edited_image_column]
    if cfg.id_column:
        cols.append(cfg.id_column)
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"The dataset {where} has no column(s) {missing}; its columns are {ds.column_names}. "
            "Set --original_image_column, --edit_prompt_column, --edited_image_column "
            "(and --id_column) to match."
        )
    for col in (cfg.original_image_column, cfg.edited_image_column):
        if isinstance(ds.features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))  # decoded by load_image
    prompts = ds[cfg.edit_prompt_column]
    ids = [str(x) for x in ds[cfg.id_column]] if cfg.id_column else [str(i) for i in range(len(ds))]
    labels, bad, origin = _rewards_json(cfg)
    if cfg.max_train_samples:
        ids = ids[: cfg.max_train_samples]
    root = cfg.data_dir if os.path.isdir(cfg.data_dir) else ""
    examples = []
    for row, (rid, prompt) in enumerate(zip(ids, prompts)):
        r = labels.get(rid)
        examples.append(
            EditExample(
                rid,
                prompt if isinstance(prompt, str) else "",
                HFImage(ds, row, cfg.original_image_column, root),
                HFImage(ds, row, cfg.edited_image_column, root),
                r,
                origin if r is not None else {},
            )
        )
    info = {"source": "hf", "dataset": where, "split": cfg.split, "rows": len(ds)}
    if cfg.rewards_json:
        info["rewards_json"] = cfg.rewards_json
    return SourceData(examples, bad, info)


def _open_hf(cfg: Any) -> tuple[Any, str]:
    import datasets

    path = Path(cfg.data_dir)
    saved = any((path / f).exists() for f in ("state.json", "dataset_dict.json"))
    if path.is_dir() and saved:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise ValueError(
                    f"The dataset at {path} has no split {cfg.split!r}; it has {list(ds)}."
                )
            ds = ds[cfg.split]
        return ds, str(path)
    name = {"name": cfg.dataset_config_name} if cfg.dataset_config_name else {}
    where = cfg.data_dir + (f" ({cfg.dataset_config_name})" if name else "")
    return datasets.load_dataset(cfg.data_dir, split=cfg.split, **name), where


def _rewards_json(cfg: Any) -> tuple[dict[str, Rewards], list[BadItem], dict[str, Any]]:
    if not cfg.rewards_json:
        return {}, [], {}
    try:
        good, malformed = load_rewardedit(Path(cfg.rewards_json))
    except RewardValidationError as e:
        raise ValueError(f"Cannot read the reward labels {cfg.rewards_json}: {e}") from e
    bad = [BadItem(m.triplet_id, "bad_label", m.reason) for m in malformed]
    return good, bad, {"origin": "rewardedit", "file": str(cfg.rewards_json)}


def _rewardedit(cfg: Any) -> SourceData:
    root = Path(cfg.data_dir)
    labels, bad, origin = _rewards_json(cfg)
    prompts: dict[str, Any] = {}
    examples = []
    for rid, rewards in labels.items():
        d = os.path.dirname(rid) or "."
        fields = {"id": rid, "dir": d, "name": os.path.basename(rid)}
        try:
            instruction = _read_prompt(root / cfg.prompt_pattern.format(**fields), prompts)
        except ValueError as e:
            bad.append(BadItem(rid, "bad_instruction", str(e)))
            continue
        examples.append(
            EditExample(
                rid,
                instruction,
                PathImage(root / cfg.original_pattern.format(**fields)),
                PathImage(root / cfg.edited_pattern.format(**fields)),
                rewards,
                origin,
            )
        )
    info = {"source": "rewardedit", "folder": str(root), "rewards_json": cfg.rewards_json}
    return SourceData(examples, bad, info)


def _read_prompt(path: Path, memo: dict[str, Any]) -> str:
    """The instruction in ``path``: InstructPix2Pix's prompt.json (key "edit") or a text file."""
    key = str(path)
    if key not in memo:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            memo[key] = ValueError(f"cannot read the instruction file {path}: {e.strerror}")
        else:
            if path.suffix == ".json":
                try:
                    doc = json.loads(text)
                    memo[key] = doc["edit"] if isinstance(doc, dict) else None
                except (json.JSONDecodeError, KeyError):
                    memo[key] = None
                if not isinstance(memo[key], str):
                    memo[key] = ValueError(f"{path} has no string field 'edit'")
            else:
                memo[key] = text.strip()
    value = memo[key]
    if isinstance(value, ValueError):
        raise value
    return value


def _store(cfg: Any) -> SourceData:
    from core.store import Store

    path = Path(cfg.data_dir)
    if not path.is_file():
        raise ValueError(
            f"data='store' needs data_dir to be the store's database file; {path} is not a file."
        )
    store = Store(path)
    split = cfg.split or None
    labels = store.export_labels(split=split)
    examples, rejected = [], 0
    for t in store.list_triplets(split=split):
        if t.get("review_status") == "rejected":
            rejected += 1
            continue
        lab = labels.get(t["id"])
        provenance = {}
        if lab is not None:
            provenance = {
                "origin": lab.origin,
                "status": lab.status,
                "version": lab.version,
                "reviewed_by": lab.reviewed_by,
                "judge_model": lab.judge_model,
                "prompt_version": lab.prompt_version,
                "updated_at": lab.updated_at,
            }
        examples.append(
            EditExample(
                t["id"],
                t["instruction"],
                PathImage(store.image_path(t["original"])),
                PathImage(store.image_path(t["edited"])) if t["edited"] else PathImage(""),
                lab.rewards if lab is not None else None,
                provenance,
            )
        )
    info = {"source": "store", "database": str(path), "split": split, "rejected_left_out": rejected}
    return SourceData(examples, [], info)


def provenance_summary(examples: Sequence[EditExample]) -> dict[str, int]:
    """How many labels came from each origin, e.g. {"human": 3, "judge:gpt-4o@v2": 120}."""
    c: Counter[str] = Counter()
    for ex in examples:
        p = ex.provenance
        if ex.rewards is None:
            continue
        origin = p.get("origin", "unknown")
        if origin == "judge" and p.get("judge_model"):
            origin = f"judge:{p['judge_model']}@{p.get('prompt_version')}"
        elif origin == "reward-model" and p.get("judge_model"):
            origin = f"reward-model:{p['judge_model']}"
        c[origin] += 1
    return dict(c)
