"""Benchmark items: Real-Edit, Shapes-Edit, and any folder or store selection of edits.

A benchmark is a list of :class:`BenchmarkItem` -- an input image, an instruction, and optionally
a category, a ground-truth target image, captions of the desired output and of the input, and
judge context
(the Shapes oracle's scene description). Every item has a stable ``item_id``, the key under which
generations and verdicts are stored, so a re-run finds its earlier work.

Sources (:func:`train.evaluate.benchmarks.load_benchmark` picks one from a short spec string):

``shapes`` / ``shapes?seed=S&size=PX&scenes=N`` / ``shapes:DIR``
    Shapes-Edit, the synthetic 560-item benchmark (80 scenes x 7 categories, exact ground truth),
    generated on the fly (``data.shapes.bench_scene``; defaults seed 0, 64 px, 80 scenes) or read
    from the ``bench`` split of a folder written by ``python -m data synth``. Captions of the
    input and the target come from :func:`data.shapes.captions.captions_from_meta`.
``real-edit:DIR`` / ``real-edit:OWNER/NAME``
    Real-Edit (paper §5: 80 Unsplash images x 7 instructions). Two local layouts are accepted:

    1. the authors' release, as read by their ``eval.py``::

           DIR/real_edit_instruct.json    (or DIR/gpt_eval/real_edit_instruct.json)
           DIR/Real-Edit/<image file>     (or the images next to the JSON)

       where the JSON maps an image file name to its list of 7 instruction strings, each
       ``"<Category>...: <instruction>"`` (e.g. ``"Local: make the car red"``); objects
       ``{"category": ..., "instruction": ...}`` are accepted as well;
    2. the folder layout below (``metadata.jsonl`` with a ``category`` column).

    A hub id is downloaded with ``huggingface_hub.snapshot_download`` when online (the machine
    must allow it; ``HF_HUB_OFFLINE=1`` refuses), then read as a local folder.
``folder:DIR``
    ``DIR/metadata.jsonl`` (the Hugging Face *imagefolder* convention), ``metadata.csv``,
    ``items.jsonl`` or ``items.csv``: one row per edit with an image path relative to ``DIR``
    (column ``file_name`` or ``image``), an ``instruction`` and optionally ``category``,
    ``target`` (ground-truth image path), ``target_caption`` (caption of the desired output),
    ``source_caption`` (caption of the input) and ``id``. Column names can be overridden with
    :class:`FolderColumns`.
``store:DB[?split=NAME]``
    Triplets already in the studio's SQLite store (see :func:`load_store_selection`).

Nothing is dropped silently: an unreadable row raises with its row number and reason; entries
without a category are kept (category ``None``) and counted in :attr:`Benchmark.notes`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from core.images import encode_png, load_image
from data.shapes.edits import CATEGORIES  # Real-Edit's seven categories (paper Fig. 7 order)

ImageRef = str | Path | bytes | Image.Image


class BenchmarkError(ValueError):
    """A benchmark source cannot be read; the message names the file, row and reason."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One edit to perform: input image + instruction (+ category, ground truth, judge context)."""

    item_id: str  # stable and unique within the benchmark
    instruction: str
    image: ImageRef  # the input image: a path, encoded bytes or a PIL image
    category: str | None = None  # one of CATEGORIES for Real-Edit / Shapes-Edit
    target: ImageRef | None = None  # the ground-truth edited image, when known
    target_caption: str | None = None  # caption of the desired output (for CLIP-T)
    source_caption: str | None = None  # caption of the input (with target_caption: CLIP direction)
    context: Mapping[str, Any] = field(default_factory=dict)  # ground truth for oracle judges

    def __post_init__(self) -> None:
        if not isinstance(self.item_id, str) or not self.item_id:
            raise BenchmarkError("every benchmark item needs a non-empty string item_id.")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise BenchmarkError(f"item {self.item_id!r} has an empty instruction.")

    def load_image(self) -> Image.Image:
        return load_image(self.image, name=f"the input image of item {self.item_id!r}")

    def load_target(self) -> Image.Image | None:
        if self.target is None:
            return None
        return load_image(self.target, name=f"the target image of item {self.item_id!r}")

    def image_png(self) -> bytes:
        """Canonical PNG bytes of the input image (what is stored and sent to judges)."""
        return encode_png(self.load_image())


@dataclass
class Benchmark:
    """A named, ordered list of items plus where it came from and what the loader noticed."""

    name: str
    items: list[BenchmarkItem]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        dup = [k for k, c in Counter(i.item_id for i in self.items).items() if c > 1]
        if dup:
            raise BenchmarkError(
                f"benchmark {self.name!r} has duplicate item ids, e.g. {dup[:3]}; ids must be "
                "unique so that outputs and verdicts can be matched to items."
            )

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    @property
    def categories(self) -> list[str]:
        """Categories present, in CATEGORIES order first, then any others alphabetically."""
        present = {i.category for i in self.items if i.category}
        known = [c for c in CATEGORIES if c in present]
        return known + sorted(present - set(known))

    @property
    def has_targets(self) -> bool:
        return any(i.target is not None for i in self.items)

    def fingerprint(self) -> str:
        """Hash of the item ids and instructions: two runs with equal fingerprints saw the same
        items (the images themselves are identified by their hashes in the store)."""
        h = hashlib.sha256()
        for i in self.items:
            h.update(f"{i.item_id}\t{i.category}\t{i.instruction}\n".encode())
        return h.hexdigest()[:16]

    def select(
        self,
        limit: int | None = None,
        per_category: int | None = None,
        categories: Sequence[str] | None = None,
    ) -> Benchmark:
        """A deterministic subset: only ``categories``, at most ``per_category`` items of each
        (in order), then the first ``limit`` items. Notes record what was selected."""
        items = list(self.items)
        notes = list(self.notes)
        if categories:
            wanted = [normalise_category(c) for c in categories]
            unknown = set(wanted) - set(self.categories)
            if unknown:
                raise BenchmarkError(
                    f"benchmark {self.name!r} has no categor{'y' if len(unknown) == 1 else 'ies'} "
                    f"{sorted(unknown)}; it has {self.categories}."
                )
            items = [i for i in items if i.category in wanted]
        if per_category is not None:
            seen: Counter[str | None] = Counter()
            kept = []
            for i in items:
                if seen[i.category] < per_category:
                    kept.append(i)
                seen[i.category] += 1
            items = kept
        if limit is not None:
            items = items[:limit]
        if len(items) != len(self.items):
            notes.append(
                f"subset: {len(items)} of {len(self.items)} items "
                f"(limit={limit}, per_category={per_category}, categories={categories})"
            )
        return Benchmark(self.name, items, self.source, notes)


def normalise_category(name: str | None) -> str | None:
    """``"Local Editing"`` -> ``"local"``; unknown names are kept lower-cased, never dropped."""
    if name is None:
        return None
    text = re.sub(r"\s+", " ", str(name).strip().lower())
    text = re.sub(r"[\s_-]*(edit|editing|edits)$", "", text).strip(" .:_-")
    return text or None


# -- folder layout ------------------------------------------------------------------------------

MANIFEST_NAMES = ("metadata.jsonl", "metadata.csv", "items.jsonl", "items.csv")


@dataclass(frozen=True)
class FolderColumns:
    """Column names of a folder manifest; ``None`` means "detect from the usual names"."""

    image: str | None = None  # input image path, relative to the folder
    instruction: str | None = None
    category: str | None = None
    target: str | None = None  # ground-truth image path, relative to the folder
    target_caption: str | None = None
    source_caption: str | None = None
    id: str | None = None

    CANDIDATES = {
        "image": ("file_name", "image", "input_image", "source_image", "original", "input"),
        "instruction": ("instruction", "edit", "edit_instruction", "prompt", "edit_prompt"),
        "category": ("category", "edit_type", "type"),
        "target": ("target", "target_image", "ground_truth", "edited_image", "output_image"),
        "target_caption": ("target_caption", "output_caption", "caption"),
        "source_caption": ("source_caption", "input_caption", "original_caption"),
        "id": ("id", "item_id"),
    }

    def resolve(self, columns: Iterable[str], where: str) -> dict[str, str | None]:
        cols = list(columns)
        out: dict[str, str | None] = {}
        for key, candidates in self.CANDIDATES.items():
            given = getattr(self, key)
            if given is not None:
                if given not in cols:
                    raise BenchmarkError(f"{where} has no column {given!r}; its columns: {cols}.")
                out[key] = given
            else:
                out[key] = next((c for c in candidates if c in cols), None)
        for key in ("image", "instruction"):
            if out[key] is None:
                raise BenchmarkError(
                    f"{where} needs a {key} column (one of {list(self.CANDIDATES[key])}, or name "
                    f"it explicitly); its columns: {cols}."
                )
        return out


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"cannot read {path}: {e}.") from e
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{path} line {n} is not valid JSON: {e}.") from e
        if not isinstance(row, dict):
            raise BenchmarkError(
                f"{path} line {n} must be a JSON object, got {type(row).__name__}."
            )
        rows.append(row)
    return rows


def _resolve_file(root: Path, rel: Any, where: str) -> Path:
    if not isinstance(rel, str) or not rel.strip():
        raise BenchmarkError(f"{where}: expected an image path, got {rel!r}.")
    path = (root / rel).resolve()
    if not path.is_file():
        raise BenchmarkError(f"{where}: image file {rel!r} does not exist under {root}.")
    return path


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def load_folder(
    path: str | Path, columns: FolderColumns | None = None, name: str | None = None
) -> Benchmark:
    """Items from a folder with a manifest (see the module docstring for the layout)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BenchmarkError(f"benchmark folder {root} does not exist or is not a folder.")
    manifest = next((root / m for m in MANIFEST_NAMES if (root / m).is_file()), None)
    if manifest is None:
        raise BenchmarkError(
            f"{root} has no manifest; expected one of {', '.join(MANIFEST_NAMES)} with one row "
            "per edit (image path, instruction[, category, target, target_caption, "
            "source_caption, id])."
        )
    rows = _read_manifest(manifest)
    if not rows:
        raise BenchmarkError(f"{manifest} has no rows.")
    cols = (columns or FolderColumns()).resolve(rows[0].keys(), str(manifest))
    items, seen_ids, uncategorised = [], Counter(), 0
    for n, row in enumerate(rows, 1):
        where = f"{manifest.name} row {n}"
        image = _resolve_file(root, row.get(cols["image"]), where)
        instruction = row.get(cols["instruction"])
        if _blank(instruction):
            raise BenchmarkError(f"{where}: the instruction is empty.")
        category = None if cols["category"] is None else row.get(cols["category"])
        category = None if _blank(category) else normalise_category(category)
        uncategorised += category is None
        target = None
        if cols["target"] and not _blank(row.get(cols["target"])):
            target = _resolve_file(root, row[cols["target"]], where)
        caption, source_caption = None, None
        if cols["target_caption"] and not _blank(row.get(cols["target_caption"])):
            caption = str(row[cols["target_caption"]])
        if cols["source_caption"] and not _blank(row.get(cols["source_caption"])):
            source_caption = str(row[cols["source_caption"]])
        if cols["id"] and not _blank(row.get(cols["id"])):
            item_id = str(row[cols["id"]])
        else:  # content-derived, so the id survives reordering of the manifest
            rel = image.relative_to(root.resolve()).as_posix()
            digest = hashlib.sha256(str(instruction).encode()).hexdigest()[:8]
            item_id = f"{rel}#{digest}"
            seen_ids[item_id] += 1
            if seen_ids[item_id] > 1:
                item_id = f"{item_id}.{seen_ids[item_id]}"
        items.append(
            BenchmarkItem(
                item_id, str(instruction).strip(), image, category, target, caption, source_caption
            )
        )
    notes = [f"{uncategorised} item(s) have no category"] if uncategorised else []
    return Benchmark(name or root.name, items, str(root), notes)


# -- Real-Edit ------------------------------------------------------------------------------------

REAL_EDIT_JSON = "real_edit_instruct.json"
REAL_EDIT_SIZE = (80, 7)  # images x instructions per image in the paper


def _find_real_edit_json(root: Path) -> Path | None:
    for candidate in (root / REAL_EDIT_JSON, root / "gpt_eval" / REAL_EDIT_JSON):
        if candidate.is_file():
            return candidate
    return None


def parse_real_edit_entry(entry: Any, where: str) -> tuple[str | None, str]:
    """One instruction entry of the release -> (category or None, instruction).

    Strings are ``"<prefix>: <instruction>"`` where the prefix names the category (possibly with
    a number or the word "edit"); a string whose prefix names no category is kept whole with
    category None. Objects ``{"category", "instruction"}`` are read as they are.
    """
    if isinstance(entry, Mapping):
        instruction = entry.get("instruction") or entry.get("prompt")
        if _blank(instruction):
            raise BenchmarkError(f"{where}: the entry has no instruction: {entry!r}.")
        return normalise_category(entry.get("category")), str(instruction).strip()
    if not isinstance(entry, str) or not entry.strip():
        raise BenchmarkError(f"{where}: expected an instruction string, got {entry!r}.")
    prefix, sep, rest = entry.partition(": ")
    if sep:
        words = set(re.findall(r"[a-z]+", prefix.lower()))
        found = [c for c in CATEGORIES if c in words]
        if len(found) == 1 and rest.strip():
            return found[0], rest.strip()
    return None, entry.strip()


def load_real_edit(source: str | Path, category_by_position: bool = False) -> Benchmark:
    """Real-Edit from a local folder (either layout) or a hub dataset id.

    :param category_by_position: for entries whose text names no category, take the category
        from the entry's position in its image's list of 7 (the paper's order, CATEGORIES).
        Off by default: the position is a convention of the paper's figure, not data.
    """
    root = Path(source).expanduser()
    if not root.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
            root = _download_dataset(str(source))
        else:
            raise BenchmarkError(f"Real-Edit source {source!r} is neither a folder nor a hub id.")
    spec = _find_real_edit_json(root)
    if spec is None:
        if any((root / m).is_file() for m in MANIFEST_NAMES):
            bench = load_folder(root, name="real-edit")
            bench.notes.extend(_size_notes(bench))
            return bench
        raise BenchmarkError(
            f"{root} holds neither the release's {REAL_EDIT_JSON} nor a manifest "
            f"({', '.join(MANIFEST_NAMES)}); see docs/evaluation.md for the layouts."
        )
    try:
        doc = json.loads(spec.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"cannot read {spec}: {e}.") from e
    if not isinstance(doc, Mapping):
        raise BenchmarkError(f"{spec} must map image file names to lists of instructions.")
    image_dirs = [spec.parent / "Real-Edit", root / "Real-Edit", spec.parent, root]
    items, no_category, by_position = [], 0, 0
    for image_name, entries in doc.items():
        where = f"{spec.name} entry {image_name!r}"
        image = next((d / image_name for d in image_dirs if (d / image_name).is_file()), None)
        if image is None:
            raise BenchmarkError(
                f"{where}: image file not found in {[str(d) for d in dict.fromkeys(image_dirs)]}."
            )
        if not isinstance(entries, list) or not entries:
            raise BenchmarkError(f"{where}: expected a non-empty list of instructions.")
        for k, entry in enumerate(entries):
            category, instruction = parse_real_edit_entry(entry, f"{where} #{k}")
            if category is None and category_by_position and len(entries) == len(CATEGORIES):
                category, by_position = CATEGORIES[k], by_position + 1
            no_category += category is None
            stem = Path(image_name).stem
            items.append(BenchmarkItem(f"{stem}/{k}", instruction, image, category))
    bench = Benchmark("real-edit", items, str(root))
    if by_position:
        bench.notes.append(f"{by_position} categories taken from the entry position")
    if no_category:
        bench.notes.append(
            f"{no_category} instruction(s) name no category (pass category_by_position=True / "
            "--category-by-position to use the paper's order)"
        )
    bench.notes.extend(_size_notes(bench))
    return bench


def _size_notes(bench: Benchmark) -> list[str]:
    images = {str(i.image) for i in bench.items}
    want_images, want_each = REAL_EDIT_SIZE
    if len(images) == want_images and len(bench) == want_images * want_each:
        return []
    return [
        f"{len(images)} images and {len(bench)} instructions; the paper's Real-Edit has "
        f"{want_images} and {want_images * want_each}"
    ]


def _download_dataset(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset"))
    except (ImportError, OSError, ValueError) as e:  # hub errors are OSErrors (HTTP, offline)
        raise BenchmarkError(
            f"Cannot download the dataset {repo_id!r} from the Hugging Face hub ({e}). On an "
            "offline machine, copy the dataset to a folder and pass that folder instead."
        ) from e
