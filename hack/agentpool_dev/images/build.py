"""Build the catalog's images once per content hash; later calls reuse the archives.

Each image's key hashes its recipe (Dockerfile, build arguments, the Debian suite and
packages), the repository files its build copies, the locked wheels when pip installs any,
and its base image's key, so a change anywhere below an image rebuilds it and the images
built on it, and nothing else. Archives live in `~/.cache/agentpool/images` (or
`$AGENTPOOL_CACHE/images`) as `<image>-<key>.tar`, docker-archive format, which
`ctr images import` and `buildah pull` both read.

Reproducible in this sense: the same checkout and lock give the same recipe and pinned
inputs; Debian packages are whatever the suite serves on the day of a cold build (the
installed versions are listed in the image's rootfs and checked where a tag names one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agentpool_dev.images import buildah as buildah_mod
from agentpool_dev.images import inputs
from agentpool_dev.images.catalog import PYTHON_LOCK, Image, catalog
from agentpool_dev.images.inputs import BuildError
from agentpool_dev.paths import REPO_ROOT

# Bump when the way images are built changes in a way the hashed inputs do not show.
RECIPE_VERSION = "1"

Log = Callable[[str], None]


def cache_dir() -> Path:
    root = os.environ.get("AGENTPOOL_CACHE")
    base = Path(root) if root else Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentpool"
    return base / "images"


@dataclass(frozen=True)
class Built:
    image: Image
    archive: Path


def _log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr)


def _key(image: Image, keys: dict[str, str]) -> str:
    parts = [RECIPE_VERSION, image.name, image.context, repr(sorted(image.build_args.items())),
             repr(image.rootfs)]
    files = [REPO_ROOT / path for path in image.inputs]
    if image.context == "pause":
        files += inputs.pause_sources()
    else:
        files.append(image.dockerfile)
    if image.base is not None:
        parts.append(f"base={keys[image.base]}")
    if image.uses_wheels:
        files.append(PYTHON_LOCK)
    return inputs.content_hash(parts, files)


def keys() -> dict[str, str]:
    """Every image's content key (bases are hashed before the images built on them)."""
    found: dict[str, str] = {}
    for key, image in catalog().items():
        found[key] = _key(image, found)
    return found


def _archive(key: str, digest: str) -> Path:
    return cache_dir() / f"{key}-{digest}.tar"


def _with_bases(wanted: Iterable[str], images: dict[str, Image]) -> list[str]:
    """`wanted` and the images they are built on, in build order."""
    needed: set[str] = set()
    for key in wanted:
        current: str | None = key
        while current is not None and current not in needed:
            if current not in images:
                raise KeyError(f"no image {current!r}; known: {', '.join(images)}")
            needed.add(current)
            current = images[current].base
    return [key for key in images if key in needed]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder at a time per machine (two test sessions must not build the same image)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(wanted: Iterable[str] | None = None, log: Log = _log) -> dict[str, Built]:
    """The archives of `wanted` images (default: all), building those not cached yet."""
    images = catalog()
    order = _with_bases(wanted if wanted is not None else images, images)
    with _locked():
        digests = keys()
        missing = [key for key in order if not _archive(key, digests[key]).exists()]
        if missing:
            _build(missing, images, digests, log)
    return {key: Built(images[key], _archive(key, digests[key])) for key in order}


def _build(missing: list[str], images: dict[str, Image], digests: dict[str, str],
           log: Log) -> None:
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="build-") as scratch, \
            buildah_mod.session(Path(scratch) / "buildah") as buildah:
        work = Path(scratch)
        loaded: set[str] = set()
        for key in missing:
            image = images[key]
            started = time.monotonic()
            base = image.base
            if base is not None and base not in loaded and base not in missing:
                buildah.load(_archive(base, digests[base]))
            _build_one(image, buildah, work / key)
            archive = _archive(key, digests[key])
            buildah.save(image.name, archive)
            loaded.add(key)
            _prune(key, keep=archive)
            log(f"built {image.name} in {time.monotonic() - started:.0f}s -> {archive.name}")


def _build_one(image: Image, buildah: buildah_mod.Buildah, work: Path) -> None:
    work.mkdir(parents=True)
    build_args = dict(image.build_args)
    if image.base is not None and image.base_arg is not None:
        build_args[image.base_arg] = catalog()[image.base].name
    volumes: dict[Path, str] = {}
    dockerfile, context = image.dockerfile, REPO_ROOT
    if image.context == "rootfs":
        context = work / "context"
        context.mkdir()
        _rootfs(image, context / "rootfs.tar", work)
    elif image.context == "pause":
        context = work / "context"
        inputs.pause_binary(context / "bin" / f"pause-linux-{build_args['ARCH']}")
        dockerfile = context / "Dockerfile"
        shutil.copyfile(inputs.kubernetes_source() / image.dockerfile, dockerfile)
    if image.uses_wheels:
        wheels = inputs.wheelhouse(cache_dir() / f"wheels-{inputs.content_hash([], [PYTHON_LOCK])}")
        volumes[wheels] = "/wheelhouse"
        volumes[inputs.pip_config(work / "pip.conf")] = "/etc/pip.conf"
    buildah.build(image.name, dockerfile, context, build_args, volumes)


def _rootfs(image: Image, tar: Path, work: Path) -> None:
    spec = image.rootfs
    if spec is None:
        raise BuildError(f"{image.key}: a rootfs image needs a Rootfs recipe")
    scratch = work / "mmdebstrap"
    scratch.mkdir()
    inputs.debian_rootfs(spec, tar, scratch)
    if spec.version_of:
        installed = inputs.installed_version(tar, spec.version_of) or "(not installed)"
        tag = image.name.rsplit(":", 1)[1]
        upstream = installed.split(":")[-1].split("-")[0]
        if upstream != tag:
            raise BuildError(f"{image.key}: Debian {spec.suite} has {spec.version_of} "
                             f"{installed}, but the image is to be tagged {tag}")


def _prune(key: str, keep: Path) -> None:
    """Older archives of the same image: no longer any hash's, only disk."""
    for old in cache_dir().glob(f"{key}-*.tar"):
        if old != keep:
            old.unlink(missing_ok=True)


def node_archives(wanted: Iterable[str] | None = None, log: Log = _log) -> dict[str, Path]:
    """Image name -> archive for real nodes to import: `wanted` (catalog keys) or every image
    pods may run. Importing is the slow part of a node's start (unpacking ~300 MB per Python
    image), so callers ask for what their pods use."""
    return {built.image.name: built.archive for built in ensure(wanted, log=log).values()
            if built.image.on_nodes and (wanted is None or built.image.key in wanted)}
