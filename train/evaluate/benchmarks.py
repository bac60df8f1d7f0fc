"""Loading a benchmark: :func:`load_benchmark` (the one entry point, from a short spec string),
and the sources that live in other parts of MRC Studio: Shapes-Edit and store selections.

Items, Real-Edit and folders are in :mod:`train.evaluate.benchmark_items`, which depends on
nothing here; this module adds ``data.shapes`` and ``core.store`` on top of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from PIL import Image

from train.evaluate.benchmark_items import (
    Benchmark,
    BenchmarkError,
    BenchmarkItem,
    load_folder,
    load_real_edit,
    normalise_category,
)

SHAPES_DEFAULTS = {"seed": 0, "size": 64, "scenes": 80}  # Shapes-Edit as data.shapes.synth makes it


def load_shapes(source: str | Path | None = None) -> Benchmark:
    """Shapes-Edit: 80 scenes x 7 categories = 560 items with exact ground truth.

    :param source: ``None`` or ``"?seed=S&size=PX&scenes=N"`` generates the benchmark in memory
        with :func:`data.shapes.bench_scene` (deterministic: the same items as the ``bench``
        split that ``python -m data synth`` writes with those settings); a folder path reads
        that folder's ``bench`` split with :func:`data.shapes.load_split`.

    Each item's judge context is its Shapes meta (``size``, ``scene``, ``edit``): everything the
    oracle needs, also stored with the item's triplet. Its ``source_caption`` / ``target_caption``
    describe the input and the ground-truth result (:func:`data.shapes.captions.captions_from_meta`),
    for CLIP-T and CLIP direction similarity.
    """
    from data.shapes import SynthConfig, bench_scene, load_split

    text = "" if source is None else str(source)
    if not text or text.startswith("?"):
        opts = dict(SHAPES_DEFAULTS)
        for key, value in parse_qsl(text.lstrip("?"), keep_blank_values=True):
            if key not in opts:
                raise BenchmarkError(
                    f"unknown Shapes option {key!r}; use seed, size and scenes (e.g. shapes?size=32)."
                )
            try:
                opts[key] = int(value)
            except ValueError:
                raise BenchmarkError(f"Shapes option {key}={value!r} must be an integer.") from None
        try:
            cfg = SynthConfig(train=0, bench=opts["scenes"], seed=opts["seed"], size=opts["size"])
            triplets = [t for i in range(cfg.bench) for t in bench_scene(i, cfg)]
        except ValueError as e:
            raise BenchmarkError(f"cannot generate Shapes-Edit with {opts}: {e}") from e
        items = [
            BenchmarkItem(
                t.id,
                t.edit.instruction,
                Image.fromarray(t.original),
                t.edit.category,
                target=Image.fromarray(t.target),
                context=t.meta,
                **shapes_captions(t.meta, t.id),
            )  # fmt: skip
            for t in triplets
        ]
        source_text = "generated: " + ", ".join(f"{k}={v}" for k, v in opts.items())
        return Benchmark("shapes", items, source_text)
    folder = Path(text).expanduser()
    try:
        rows = load_split(folder, "bench")
    except ValueError as e:  # ShapesFolderError is a ValueError
        raise BenchmarkError(str(e)) from e
    items = [
        BenchmarkItem(
            r.id,
            r.instruction,
            r.original,
            normalise_category(r.category),
            target=r.target,
            context=dict(r.meta),
            **shapes_captions(r.meta, r.id),
        )  # fmt: skip
        for r in rows
    ]
    return Benchmark("shapes", items, str(folder))


def shapes_captions(meta: Mapping[str, Any], item_id: str) -> dict[str, str]:
    """``{"source_caption": ..., "target_caption": ...}`` of a Shapes item from its meta."""
    from data.shapes.captions import captions_from_meta

    try:
        source, target = captions_from_meta(dict(meta))
    except (KeyError, TypeError, ValueError) as e:
        raise BenchmarkError(
            f"Shapes item {item_id!r}: cannot caption its scene and edit ({type(e).__name__}: {e})."
        ) from e
    return {"source_caption": source, "target_caption": target}


def load_store_selection(
    store_path: str | Path,
    *,
    split: str | None = None,
    source: str | None = None,
    category: str | None = None,
    name: str | None = None,
) -> Benchmark:
    """Triplets of the studio's store as benchmark items (input, instruction, category, target).

    The item id is the triplet's ``external_id`` when every selected triplet has a distinct one,
    else the triplet id. Triplet ``meta`` becomes the judge context (e.g. Shapes ground truth);
    a triplet whose meta holds a Shapes ``scene`` and ``edit`` also gets its captions.
    """
    from core.store import Store

    path = Path(store_path).expanduser()
    if not path.is_file():
        raise BenchmarkError(f"store {path} does not exist.")
    store = Store(path)
    rows = store.list_triplets(split=split, source=source, category=category)
    if not rows:
        raise BenchmarkError(
            f"store {path} has no triplets with split={split!r}, source={source!r}, "
            f"category={category!r}."
        )
    external = [r["external_id"] for r in rows]
    use_external = all(external) and len(set(external)) == len(external)
    items = [
        BenchmarkItem(
            item_id=r["external_id"] if use_external else r["id"],
            instruction=r["instruction"],
            image=store.image_path(r["original"]),
            category=normalise_category(r["category"]),
            target=store.image_path(r["target"]) if r["target"] else None,
            context=dict(r["meta"]),
            **(
                shapes_captions(r["meta"], r["external_id"] or r["id"])
                if _is_shapes_meta(r["meta"])
                else {}
            ),
        )
        for r in rows
    ]
    label = name or "store" + "".join(f"-{v}" for v in (split, source, category) if v)
    return Benchmark(label, items, str(path))


def _is_shapes_meta(meta: Any) -> bool:
    return isinstance(meta, Mapping) and "scene" in meta and "edit" in meta


# -- one entry point ------------------------------------------------------------------------------


def load_benchmark(spec: str, *, category_by_position: bool = False) -> Benchmark:
    """A benchmark from a short spec: ``shapes[:DIR]``, ``shapes?seed=S&size=PX&scenes=N``,
    ``real-edit:SRC``, ``folder:DIR`` or ``store:DB[?split=S&source=S&category=C]`` (see
    :mod:`train.evaluate.benchmark_items`)."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind.startswith("shapes?"):  # generated Shapes-Edit with options, e.g. shapes?size=32
        kind, arg = "shapes", "?" + kind.split("?", 1)[1]
    if kind == "shapes":
        return load_shapes(arg or None)
    if kind in ("real-edit", "realedit", "real_edit"):
        if not arg:
            raise BenchmarkError("real-edit needs a source: real-edit:DIR or real-edit:OWNER/NAME.")
        return load_real_edit(arg, category_by_position=category_by_position)
    if kind == "folder":
        if not arg:
            raise BenchmarkError("folder needs a path: folder:DIR.")
        return load_folder(arg)
    if kind == "store":
        path, _, query = arg.partition("?")
        filters: dict[str, str] = {}
        for part in filter(None, query.split("&")):
            key, sep, value = part.partition("=")
            if not sep or key not in ("split", "source", "category"):
                raise BenchmarkError(
                    f"store filter {part!r} must be split=..., source=... or category=...."
                )
            filters[key] = value
        return load_store_selection(path, **filters)
    raise BenchmarkError(
        f"unknown benchmark {spec!r}; use shapes[:DIR], real-edit:DIR_OR_HUB_ID, folder:DIR or "
        "store:DB[?split=...]."
    )
