"""The systems a benchmark run compares: MRC pipelines, stock InstructPix2Pix, pre-made outputs.

A :class:`SystemSpec` is everything that determines a system's outputs: the model (a pipeline
folder or hub id, or a folder of images made elsewhere), its kind, and every generation setting
(rewards, reward text, reward guidance, steps, guidance scales, scheduler, resolution, seed). Its
:meth:`~SystemSpec.fingerprint` hashes all of that plus a digest of the model files, and names the
store run the outputs belong to: the same system on the same benchmark always finds its earlier
outputs, and a retrained model or a changed setting never reuses stale ones.

On the command line a system is ``NAME=PATH[,key=value...]``::

    baseline=demo_models/shapes_baseline
    mrc=demo_models/shapes_mrc,rewards=5/5/5,reward_guidance=1.5,steps=20
    other=outputs/method_x,kind=folder

Keys: ``kind`` (mrc | ip2p | folder; detected from ``model_index.json`` when omitted),
``rewards`` (``F/P/Q``), ``reward_text`` (``a;b;c``), ``reward_guidance``, ``steps``,
``guidance`` (text guidance; by default the value the pipeline folder records in
``model_index.json``, else InstructPix2Pix's 7.5), ``image_guidance`` (likewise, else 1.5),
``scheduler``, ``resolution``, ``seed``,
``best_of`` and ``reward_model`` (best-of-N: draw N candidates per item and keep the one the
reward model ranks first; candidate 0 is the single-sample output, so best-of-N can only change
an item by replacing it with a candidate the model prefers).

A *folder* system reads its images from ``outputs.jsonl`` / ``outputs.csv`` (columns ``item_id``
and ``file_name``) or, without a manifest, from files named after the item id (``/`` and other
characters outside ``[A-Za-z0-9._-]`` replaced by ``_``) with any image extension.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

SystemKind = Literal["mrc", "ip2p", "folder"]
KINDS: tuple[str, ...] = ("mrc", "ip2p", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_FULL_HASH_LIMIT = 64 * 2**20  # files up to this size are hashed by content, larger by size+mtime


@dataclass(frozen=True)
class SystemSpec:
    """One system of a benchmark run (frozen: its fingerprint names its stored outputs)."""

    name: str  # label in tables and galleries
    path: str  # pipeline folder / hub id, or the folder of pre-made outputs
    kind: SystemKind = "mrc"
    rewards: tuple[float, float, float] | None = (5.0, 5.0, 5.0)  # mrc: requested F, P, Q
    reward_text: tuple[str, str, str] = ("", "", "")  # mrc: failure texts, "" for none
    reward_guidance_scale: float = 1.0  # mrc: 1 = the paper's inference
    num_inference_steps: int = 20
    guidance_scale: float = 7.5  # text guidance
    image_guidance_scale: float = 1.5
    scheduler: str | None = None  # None: the pipeline's own
    resolution: int | None = None  # resize inputs so the short side is this (None: as given)
    seed: int = 0  # base seed; each item's seed is derived from it and the item id
    best_of: int = 1  # draw N candidates per item, keep the one reward_model ranks first
    reward_model: str | None = None  # best_of > 1: an EditRewardModel folder
    group: str | None = None  # systems of one model at several reward settings share a group

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@/+-]*", self.name):
            raise ValueError(
                f"System name {self.name!r} must start with a letter or digit and use only "
                "letters, digits and _ . @ / + -."
            )
        if self.kind not in KINDS:
            raise ValueError(
                f"System {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}."
            )
        if self.kind == "mrc":
            if self.rewards is None or len(self.rewards) != 3:
                raise ValueError(f"System {self.name!r}: an MRC system needs three reward scores.")
            for r in self.rewards:
                if not 0.0 <= float(r) <= 5.0:
                    raise ValueError(f"System {self.name!r}: reward {r} is outside [0, 5].")
            if len(self.reward_text) != 3:
                raise ValueError(f"System {self.name!r}: reward_text needs three texts.")
        if self.num_inference_steps < 1:
            raise ValueError(f"System {self.name!r}: steps must be at least 1.")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"System {self.name!r}: resolution must be at least 8 pixels.")
        if self.best_of < 1:
            raise ValueError(f"System {self.name!r}: best_of must be at least 1.")
        if self.best_of > 1 and (self.kind == "folder" or not self.reward_model):
            raise ValueError(
                f"System {self.name!r}: best_of={self.best_of} needs a pipeline and "
                "reward_model=FOLDER (a model from python -m train.reward_model) to rank with."
            )

    def settings(self) -> dict[str, Any]:
        """Everything but the name that determines the outputs (stored with the run)."""
        d = asdict(self)
        for k in ("name", "group", "path"):
            d.pop(k)
        if self.kind != "mrc":
            for k in ("rewards", "reward_text", "reward_guidance_scale"):
                d.pop(k)
        if self.best_of == 1:  # single sampling: settings (and fingerprints) as before best-of
            d.pop("best_of")
            d.pop("reward_model")
        if self.kind == "folder":
            for k in ("num_inference_steps", "guidance_scale", "image_guidance_scale", "scheduler",
                      "resolution", "seed"):  # fmt: skip
                d.pop(k)
        return d

    def fingerprint(self, identity: str) -> str:
        """Hash of the settings and ``identity`` (the model's digest or the folder's identity)."""
        doc = {"settings": self.settings(), "model": identity}
        if self.best_of > 1:
            doc["reward_model_files"] = model_digest(self.reward_model)
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """A flat dict for the systems table of a report."""
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "model": self.path,
            "group": self.group,
        }
        d.update(self.settings())
        if self.kind == "mrc":
            d["rewards"] = list(self.rewards)
            d["reward_text"] = "; ".join(self.reward_text) if any(self.reward_text) else ""
        return d


def item_seed(base_seed: int, item_id: str) -> int:
    """The seed of one item: independent of batching, order and resumption."""
    digest = hashlib.sha256(f"{base_seed}\0{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# -- parsing ----------------------------------------------------------------------------------------


def parse_rewards(text: str) -> tuple[float, float, float]:
    """``"5/5/5"``, ``"5,5,5"`` or ``"3"`` (all three) -> (f, p, q), each in [0, 5]."""
    parts = [p for p in re.split(r"[/,\s]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"Rewards {text!r} must be numbers like 5/5/5 or 3.") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"Rewards {text!r} need one or three numbers (F/P/Q), got {len(values)}.")
    for v in values:
        if not 0.0 <= v <= 5.0:
            raise ValueError(f"Reward {v:g} in {text!r} is outside [0, 5].")
    return (values[0], values[1], values[2])


def parse_sweep(text: str) -> list[tuple[float, float, float]]:
    """``"0,3,5"`` (each for all three) or ``"0/0/0,3/3/3,5/5/0"`` -> reward settings, in order."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("The reward sweep is empty; give e.g. 0,3,5 or 0/0/0,5/5/0.")
    out = [parse_rewards(t) for t in items]
    return list(dict.fromkeys(out))


def _reward_name(r: Sequence[float]) -> str:
    return "/".join(f"{x:g}" for x in r)


_KEYS = {
    "kind": ("kind", str),
    "rewards": ("rewards", parse_rewards),
    "reward_text": ("reward_text", lambda s: tuple(t.strip() for t in s.split(";"))),
    "reward_guidance": ("reward_guidance_scale", float),
    "steps": ("num_inference_steps", int),
    "guidance": ("guidance_scale", float),
    "image_guidance": ("image_guidance_scale", float),
    "scheduler": ("scheduler", str),
    "resolution": ("resolution", int),
    "seed": ("seed", int),
    "best_of": ("best_of", int),
    "reward_model": ("reward_model", str),
}


def parse_system(text: str, defaults: Mapping[str, Any] | None = None) -> SystemSpec:
    """``NAME=PATH[,key=value...]`` -> a SystemSpec (see the module docstring)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"--system {text!r} must look like NAME=PATH[,key=value...].")
    path, *options = rest.split(",")
    fields: dict[str, Any] = dict(defaults or {})
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep or key.strip() not in _KEYS:
            raise ValueError(
                f"--system {name}: unknown option {opt!r}; expected key=value with key one of "
                f"{', '.join(_KEYS)}."
            )
        field, convert = _KEYS[key.strip()]
        try:
            fields[field] = convert(value.strip())
        except ValueError as e:
            raise ValueError(f"--system {name}: bad value for {key}: {e}") from None
    if "kind" not in fields or fields["kind"] is None:
        fields["kind"] = detect_kind(path.strip())
    if fields["kind"] != "mrc":
        fields["rewards"] = None
    _fill_recorded_guidance(fields, path.strip())
    return SystemSpec(name=name.strip(), path=path.strip(), **fields)


def _fill_recorded_guidance(fields: dict[str, Any], path: str) -> None:
    """Guidance left unset (None or absent) -> the pipeline folder's recorded default, so that the
    spec (and its fingerprint and report row) names the value the outputs were made with."""
    from core.sampling import DEFAULT_GUIDANCE, recorded_guidance

    unset = [k for k in ("guidance_scale", "image_guidance_scale") if fields.get(k) is None]
    if not unset:
        return
    recorded = recorded_guidance(path) if fields["kind"] != "folder" else DEFAULT_GUIDANCE
    for k in unset:
        fields[k] = recorded[0] if k == "guidance_scale" else recorded[1]


def detect_kind(path: str) -> SystemKind:
    """mrc / ip2p from a pipeline folder's ``model_index.json``; folder for a folder of images."""
    p = Path(path).expanduser()
    index = p / "model_index.json"
    if index.is_file():
        try:
            cls = json.loads(index.read_text()).get("_class_name", "")
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read {index}: {e}") from e
        if cls == "MRCInstructPix2PixPipeline":
            return "mrc"
        if cls == "StableDiffusionInstructPix2PixPipeline":
            return "ip2p"
        raise ValueError(
            f"{index} describes a {cls!r}; expected MRCInstructPix2PixPipeline or "
            "StableDiffusionInstructPix2PixPipeline (or pass kind=...)."
        )
    if p.is_dir():
        return "folder"
    raise ValueError(
        f"{path!r} is not a local pipeline folder or a folder of outputs; for a hub id pass "
        "kind=mrc or kind=ip2p explicitly."
    )


def expand_sweep(
    systems: Sequence[SystemSpec], sweep: Sequence[tuple[float, float, float]] | None
) -> list[SystemSpec]:
    """Replace each MRC system by one variant per reward setting (named ``NAME@F/P/Q``).

    A system whose own rewards are not in the sweep is kept as well. Non-MRC systems pass through.
    """
    if not sweep:
        return list(systems)
    out: list[SystemSpec] = []
    for s in systems:
        if s.kind != "mrc":
            out.append(s)
            continue
        settings = list(sweep)
        if s.rewards not in settings:
            out.append(replace(s, group=s.group or s.name))
        for r in settings:
            out.append(
                replace(s, name=f"{s.name}@{_reward_name(r)}", rewards=r, group=s.group or s.name)
            )
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"System names must be unique; {dup} appear more than once.")
    return out


# -- model identity and pre-made outputs ------------------------------------------------------------


def model_digest(path: str) -> str:
    """Identity of a model folder: file contents (size + mtime for files over 64 MiB).

    A path that is not a local folder (a hub id) is identified by its string.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        return "id:" + path
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = f.relative_to(root).as_posix()
        st = f.stat()
        h.update(f"{rel}\0{st.st_size}\0".encode())
        if st.st_size <= _FULL_HASH_LIMIT:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def folder_identity(path: str) -> str:
    """Identity of a folder of pre-made outputs: its absolute path (contents are verified per
    output by the runner, so adding missing files later does not invalidate earlier verdicts)."""
    return "folder:" + str(Path(path).expanduser().resolve())


def safe_name(item_id: str) -> str:
    """The file stem a folder system uses for an item without a manifest."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", item_id)


def folder_outputs(path: str, item_ids: Sequence[str]) -> dict[str, Path]:
    """item id -> output file for a folder system (items without a file are absent)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"output folder {root} does not exist.")
    for manifest in (root / "outputs.jsonl", root / "outputs.csv"):
        if manifest.is_file():
            return _manifest_outputs(root, manifest)
    by_stem: dict[str, Path] = {}
    for f in root.iterdir():
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
            if f.stem in by_stem:
                raise ValueError(
                    f"{root} has two images for {f.stem!r}: {by_stem[f.stem].name}, {f.name}."
                )
            by_stem[f.stem] = f
    return {i: by_stem[safe_name(i)] for i in item_ids if safe_name(i) in by_stem}


def _manifest_outputs(root: Path, manifest: Path) -> dict[str, Path]:
    text = manifest.read_text(encoding="utf-8")
    if manifest.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{manifest} line {n} is not valid JSON: {e}.") from e
    out: dict[str, Path] = {}
    for n, row in enumerate(rows, 1):
        item, file = row.get("item_id"), row.get("file_name") or row.get("image")
        if not item or not file:
            raise ValueError(f"{manifest} row {n} needs item_id and file_name; got {row!r}.")
        if item in out:
            raise ValueError(f"{manifest} row {n}: item {item!r} appears twice.")
        out[str(item)] = root / str(file)
    return out
