"""A prepared TOFU-shaped benchmark as one file: export the target, the retain oracle, their
tokenizer and evaluation results with a manifest of sha256s; import it into another cache.

Why: two CPUs whose torch dispatches different kernels (AVX512 vs AVX2) train different models
from the same data, recipe and seeds (benchmarks/results/reproduce_avx512_*.json), and every
fitness is measured against the target and the oracle. A datasheet or a comparison is therefore
reproducible only against the same two models: they travel as an artifact, as TOFU ships its
fine-tuned models, and results name them by `models_sha256` (the target's and the oracle's files).

    evounlearn prepare --benchmark entangled-large --export entangled-large.tar.gz
    evounlearn prepare --benchmark entangled-large --import entangled-large.tar.gz

An import checks, before anything is written, that the artifact was prepared from the same data
and recipe as this install's options would prepare (library versions may differ: that is the
point; it says so in one line), that every file's sha256 matches the manifest, and that the
cache does not already hold another preparation of the same entry (`--force` replaces it). It
reads only the files the manifest lists, as bytes (no tar extraction: a hostile archive cannot
write outside the cache).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError
from ...files import DIR_MODE, FILE_MODE, atomic_write_bytes, atomic_write_json, file_lock, read_json_or_none
from .build import _folder_files, _sha256, models_sha256

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
MANIFEST_NAME = "evounlearn-prepared.json"
#: the folders of a cache entry that hold models (the oracle's is `retain-<split>` in the cache)
_MODEL_DIRS = ("target", "retain")

__all__ = ["ArtifactManifest", "export_prepared", "import_for_benchmark", "import_prepared", "models_sha256",
           "read_artifact"]


@dataclass(frozen=True)
class ArtifactManifest:
    """What an artifact holds: its forget split, the recipe that prepared it (with the libraries
    of the install that trained it), the models' hash, and the sha256 of every file in it."""

    format: int
    forget_split: str
    recipe: dict[str, Any]
    models_sha256: str
    files: dict[str, str]  # name in the artifact -> sha256 of its bytes
    exported_with: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes, where: str) -> ArtifactManifest:
        try:
            data = json.loads(raw.decode("utf-8"))
            manifest = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{where}: {MANIFEST_NAME} is not an evounlearn artifact manifest ({e})") from e
        if manifest.format != ARTIFACT_FORMAT:
            raise DataError(f"{where}: artifact format {manifest.format}, this install reads format {ARTIFACT_FORMAT}")
        return manifest


def _held(folder: Path, name: str) -> dict[str, str]:
    """{name in an artifact: sha256} of a cache folder's files."""
    return {arc: _sha256(p.read_bytes()) for arc, p in _folder_files(folder, name)}


def _artifact_files(entry: Any) -> list[tuple[str, Path]]:
    """(name in the artifact, path) of a complete cache entry's files, the info JSON excluded
    (it names this machine's paths; the import writes its own)."""
    return [*_folder_files(entry.tokenizer, "tokenizer"), *_folder_files(entry.target, "target"),
            *_folder_files(entry.retain, "retain"), ("target_results.json", entry.target_results),
            ("retain_results.json", entry.retain_results)]


def _local_path(entry: Any, name: str) -> Path:
    """Where the artifact's file `name` goes in the cache entry."""
    head, _, rest = name.partition("/")
    folders = {"tokenizer": entry.tokenizer, "target": entry.target, "retain": entry.retain}
    if rest and head in folders:
        return folders[head] / rest
    return {"target_results.json": entry.target_results, "retain_results.json": entry.retain_results}[name]


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and ".." not in parts and "" not in parts
            and (parts[0] in ("tokenizer", *_MODEL_DIRS) and len(parts) > 1
                 or name in ("target_results.json", "retain_results.json")))


def export_prepared(cfg: Any, path: str | Path) -> tuple[Any, ArtifactManifest]:
    """Prepare `cfg` (a `PrepareConfig`; cached: nothing is trained when the cache has it) and
    write its cache entry to `path` (a tar, gzip-compressed when the name ends in .gz / .tgz;
    the same entry always gives the same bytes). Returns (the Prepared, the manifest)."""
    from ...models.device import runtime_info
    from .build import _entry_of, prepare

    prepared = prepare(cfg)
    entry, _, recipe = _entry_of(cfg)
    files = _artifact_files(entry)
    data = {name: p.read_bytes() for name, p in files}
    manifest = ArtifactManifest(ARTIFACT_FORMAT, entry.split, recipe, models_sha256(entry.target, entry.retain),
                                {name: _sha256(b) for name, b in data.items()},
                                {**runtime_info(), **cpu_info()})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in [(MANIFEST_NAME, json.dumps(asdict(manifest), indent=1, sort_keys=True).encode()),
                              *data.items()]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0  # no time or owner: same bytes each time
            tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    if str(path).endswith((".gz", ".tgz")):
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
            gz.write(raw)
        raw = out.getvalue()
    atomic_write_bytes(path, raw)
    return prepared, manifest


def read_artifact(path: str | Path) -> tuple[ArtifactManifest, dict[str, bytes]]:
    """The manifest and the files of an artifact, every file's sha256 and the models' hash
    checked; DataError naming the artifact and the first problem."""
    where = str(path)
    if not Path(path).is_file():
        raise DataError(f"{where}: no such artifact file")
    try:
        with tarfile.open(path, mode="r:*") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if MANIFEST_NAME not in members:
                raise DataError(f"{where}: not an evounlearn artifact (no {MANIFEST_NAME})")

            def read(name: str) -> bytes:
                m = members.get(name)
                if m is None or not m.isfile():
                    raise DataError(f"{where}: {name} is missing or not a plain file")
                f = tar.extractfile(m)
                assert f is not None  # a regular file
                return f.read()

            manifest = ArtifactManifest.parse(read(MANIFEST_NAME), where)
            for name in manifest.files:
                if not _safe_name(name):
                    raise DataError(f"{where}: the manifest lists {name!r}, not a file of a prepared benchmark")
            files = {name: read(name) for name in manifest.files}
    except (tarfile.TarError, OSError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__  # tarfile lists every method it tried
        raise DataError(f"{where}: not a readable tar archive ({first.rstrip(':')})") from e
    for name, content in files.items():
        if _sha256(content) != manifest.files[name]:
            raise DataError(f"{where}: {name} does not match its sha256 in the manifest (corrupt or altered)")
    if not {"target/config.json", "retain/config.json", "target_results.json", "retain_results.json"} <= set(files):
        raise DataError(f"{where}: the artifact lacks the target, the oracle or their results")
    with tempfile.TemporaryDirectory() as tmp:  # the models' hash, over the files as they will lie
        for name, content in files.items():
            if name.split("/")[0] in _MODEL_DIRS:
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_bytes(content)
        got = models_sha256(Path(tmp) / "target", Path(tmp) / "retain")
    if got != manifest.models_sha256:
        raise DataError(f"{where}: the models' sha256 is {got[:16]}, the manifest says {manifest.models_sha256[:16]}")
    return manifest, files


def _recipe_differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    keys = sorted((set(mine) | set(theirs)) - {"libraries"})
    return [k for k in keys if mine.get(k) != theirs.get(k)]


def import_prepared(cfg: Any, path: str | Path, force: bool = False) -> tuple[Any, ArtifactManifest, bool]:
    """Install the artifact at `path` as `cfg`'s prepared benchmark in this cache. Returns (the
    Prepared, the manifest, whether anything was written: False when the cache already held these
    models). ConfigError when the artifact was prepared from other data or another recipe, or when
    the cache holds another preparation and `force` is not set; DataError for a bad artifact."""
    from ...versions import library_versions
    from .build import _entry_of, prepare

    manifest, files = read_artifact(path)
    entry, source, recipe = _entry_of(cfg)
    if manifest.forget_split != entry.split:
        raise ConfigError(f"{path}: the artifact is the {manifest.forget_split} split, these options ask for {entry.split}")
    diff = _recipe_differences(recipe, manifest.recipe)
    if diff:
        raise ConfigError(f"{path}: prepared from other {' / '.join(diff)} than these options give "
                          "(another benchmark, size or recipe); pass the options it was exported with")
    theirs, mine = manifest.recipe.get("libraries") or {}, library_versions()
    if theirs != mine:
        log.warning("%s was trained with %s; this install has %s: using its models as they are", path,
                    ", ".join(f"{k} {v}" for k, v in sorted(theirs.items())),
                    ", ".join(f"{k} {v}" for k, v in sorted(mine.items())))
    with file_lock(entry.root):
        if entry.complete() and models_sha256(entry.target, entry.retain) == manifest.models_sha256:
            return prepare(cfg), manifest, False
        other = [name for name, folder in (("tokenizer", entry.tokenizer), ("target", entry.target),
                                           ("retain", entry.retain))
                 if folder.exists() and _held(folder, name) != {k: v for k, v in manifest.files.items()
                                                                 if k.startswith(name + "/")}]
        if other and not force:
            raise ConfigError(f"the cache holds another preparation of this benchmark ({' / '.join(other)} in "
                              f"{entry.root}); --force replaces it with the artifact's")
        if "target" in other or "tokenizer" in other:
            # the entry's other forget splits were evaluated against the replaced target: rebuilt on use
            for stale in [*entry.root.glob("prepare-*.json"), *entry.root.glob("target_results-*.json")]:
                stale.unlink(missing_ok=True)
        entry.info.unlink(missing_ok=True)  # incomplete from here until the new info is written
        entry.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import.", dir=entry.root))
        try:
            for name, content in files.items():
                dest = staging / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(content)
                os.chmod(dest, FILE_MODE)
            for name, folder in (("tokenizer", entry.tokenizer), ("target", entry.target), ("retain", entry.retain)):
                if folder.exists():
                    shutil.rmtree(folder)
                if (staging / name).is_dir():
                    os.chmod(staging / name, DIR_MODE)
                    os.replace(staging / name, folder)
            for name in ("target_results.json", "retain_results.json"):
                atomic_write_bytes(_local_path(entry, name), files[name])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        info = read_json_or_none(entry.info) or {}
        info.update({"data": source, "forget_split": entry.split, "recipe": recipe, "root": str(entry.root),
                     "models_sha256": manifest.models_sha256,
                     "imported": {"from": str(path), "trained_with": theirs, "exported_with": manifest.exported_with}})
        atomic_write_json(entry.info, info)  # last: marks the entry complete
    return prepare(cfg), manifest, True


def cpu_info() -> dict[str, Any]:
    """The CPU's name and the kernels torch dispatches to: machines with different ones prepare
    different models from the same data and seeds (why artifacts exist)."""
    import platform

    import torch

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"cpu_model": model or platform.processor(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def import_for_benchmark(benchmark: str, path: str | Path, options: list[str] | None = None,
                         force: bool = False) -> tuple[str, bool]:
    """`evounlearn prepare --benchmark NAME --import PATH [options]` from Python (the benchmark's
    size preset and setting applied as the command applies them). Returns (the models' sha256,
    whether anything was written)."""
    from .. import get_benchmark

    bench = get_benchmark(benchmark)
    report = bench.cli_prepare(None, list(options or []), force, import_from=str(path))
    return str(report.info["models_sha256"]), bool(report.info["imported"])
