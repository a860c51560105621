"""A run's inputs, pinned: which objects, at which generations, a run trains on, and the
manifest `<base_output_directory>/inputs.jsonl` the trainer reads instead of listing.

Which objects depends on the pipeline's data window (`training.data`): the run's batch
(the objects its record covers, or what its data URI holds), every matching object under
the pipeline's prefix created up to the run, or those created in the last N days. The
manifest is written once, before the job is submitted, with a create-only write: a retried
submission (or a capacity fallback) finds it and trains on the same generations.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase

from retrain.config import Pipeline
from retrain.planner import RunPlan
from retrain.ports import DataObjects, ObjectVersion

MANIFEST_NAME = "inputs.jsonl"

DIRECT_LOOKUPS = 8  # up to this many objects, one lookup each; above, one listing


@dataclass(frozen=True)
class Pinned:
    """One manifest line: an object at a generation (its size when known)."""

    bucket: str
    name: str
    generation: int
    size: int | None = None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    def __str__(self) -> str:
        return f"{self.uri}#{self.generation}"


def manifest_uri(base_output_directory: str) -> str:
    return f"{base_output_directory.rstrip('/')}/{MANIFEST_NAME}"


def manifest_text(objects: Iterable[ObjectVersion]) -> str:
    """One JSON object a line; int64 generations as strings, the way GCS writes them."""
    return "".join(
        json.dumps({"uri": o.uri, "generation": str(o.generation), "size": o.size}) + "\n"
        for o in objects
    )


def parse_manifest(text: str, uri: str) -> list[Pinned]:
    """The manifest's lines; ValueError names the line at fault."""
    pinned = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            bucket, _, name = str(entry["uri"]).removeprefix("gs://").partition("/")
            generation = int(entry["generation"])
            size = entry.get("size")
            if not str(entry["uri"]).startswith("gs://") or not bucket or not name:
                raise ValueError(f"not a gs://bucket/object URI: {entry['uri']!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{uri} line {number}: {err}") from err
        pinned.append(Pinned(bucket, name, generation, int(size) if size is not None else None))
    return pinned


# --- which objects a run covers -----------------------------------------------------------


def in_window(pipeline: Pipeline, obj: ObjectVersion, cutoff: datetime) -> bool:
    """Does a listed object belong to a windowed run ("all" / "days") cut off at `cutoff`
    (the run's creation): a non-empty object under the prefix matching `include`, created
    by then, and within the last N days for a "days" window."""
    window = pipeline.training.data
    relative = obj.name[len(pipeline.prefix) :]
    if obj.bucket != pipeline.bucket or not obj.name.startswith(pipeline.prefix):
        return False
    if obj.size == 0 or not any(fnmatchcase(relative, glob) for glob in pipeline.include):
        return False
    if obj.created is not None:
        if obj.created > cutoff:
            return False
        if window.kind == "days" and window.days is not None:
            return obj.created >= cutoff - timedelta(days=window.days)
    return True


def covered_objects(
    pipeline: Pipeline, run: RunPlan, objects: DataObjects, cutoff: datetime
) -> list[ObjectVersion]:
    """The objects, at their generations, that `run` trains on, sorted by name."""
    if pipeline.training.data.kind != "batch":
        listed = objects.list(pipeline.bucket, pipeline.prefix)
        found = [o for o in listed if in_window(pipeline, o, cutoff)]
    elif run.objects:
        found = _resolve(pipeline.bucket, run.objects, objects)
    else:
        found = _under(run.data_uri, objects)
    return sorted(found, key=lambda o: (o.name, o.generation))


def _resolve(bucket: str, keys: Sequence[str], objects: DataObjects) -> list[ObjectVersion]:
    """The "name@generation" keys a run record covers: one listing of their common folder,
    then a lookup of each generation that is no longer live."""
    wanted = [(name, int(generation)) for name, _, generation in (k.rpartition("@") for k in keys)]
    if len(wanted) <= DIRECT_LOOKUPS:
        # A run of a few objects (an `each` run: one) looks them up one by one: listing
        # their folder would cost a page per thousand objects that arrived beside them.
        stats = (objects.stat(bucket, name, generation) for name, generation in wanted)
        return [obj for obj in stats if obj is not None]
    folder = posixpath.commonprefix([name for name, _ in wanted])
    folder = folder[: folder.rfind("/") + 1]
    live = {(o.name, o.generation): o for o in objects.list(bucket, folder)}
    found = []
    for name, generation in wanted:
        obj = live.get((name, generation)) or objects.stat(bucket, name, generation)
        if obj is not None:
            found.append(obj)
    return found


def _under(data_uri: str, objects: DataObjects) -> list[ObjectVersion]:
    """What a data URI holds, as the trainer would list it: the object itself, or every
    object below the folder it names."""
    bucket, _, path = data_uri.removeprefix("gs://").partition("/")
    listed = objects.list(bucket, path)
    exact = [o for o in listed if o.name == path]
    if exact:
        return exact
    folder = path if not path or path.endswith("/") else path + "/"
    return [o for o in listed if o.name.startswith(folder)]


def gone(pinned: Sequence[Pinned], objects: DataObjects) -> list[Pinned]:
    """The pinned generations no longer readable (overwritten without versioning, deleted,
    or past the bucket's noncurrent-version retention)."""
    return [p for p in pinned if objects.stat(p.bucket, p.name, p.generation) is None]
