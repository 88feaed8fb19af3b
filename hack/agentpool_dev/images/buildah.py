"""buildah (Debian's) with a private, throw-away storage: builds the project's Dockerfiles as
they are, without a daemon or a registry.

Why buildah: it runs Dockerfiles unchanged (multi-stage, ARG, COPY --from), as root without a
daemon, with runc, and `RUN` steps get no network (`--network none`): the only way anything
reaches a build is the build context and the read-only volumes given here (the wheelhouse and
a pip.conf pointing at it). Images enter its storage from archives (`pull docker-archive:`),
and leave as archives (`push docker-archive:`), which containerd imports.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from agentpool_dev.images.inputs import BuildError, run


class Buildah:
    """buildah commands against the storage in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _cmd(self, *args: str) -> list[str]:
        return ["buildah", f"--root={self.root / 'storage'}", f"--runroot={self.root / 'run'}",
                "--storage-driver=overlay", *args]

    def load(self, archive: Path) -> None:
        run(self._cmd("pull", "--quiet", f"docker-archive:{archive}"))

    def build(self, name: str, dockerfile: Path, context: Path, build_args: dict[str, str],
              volumes: dict[Path, str]) -> None:
        argv = self._cmd("bud", "--quiet", "--network=none", "--pull=never",
                         # Fixed image and file times: equal inputs, equal layers.
                         "--timestamp=0", f"--file={dockerfile}", f"--tag={name}")
        argv += [f"--build-arg={key}={value}" for key, value in build_args.items()]
        argv += [f"--volume={source}:{target}:ro" for source, target in volumes.items()]
        run([*argv, str(context)])

    def save(self, name: str, archive: Path) -> None:
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        run(self._cmd("push", "--quiet", name, f"docker-archive:{partial}:{name}"))
        partial.rename(archive)

    def clean(self) -> None:
        """Remove every container, image and mount of this storage, then the storage."""
        if self.root.exists():
            run(self._cmd("rm", "--all"))
            run(self._cmd("rmi", "--all", "--force"))
            _unmount_below(self.root)
            shutil.rmtree(self.root)


def _unmount_below(root: Path) -> None:
    """Anything still mounted under `root` (a build killed mid-way), deepest first."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as mounts:
        targets = [line.split()[4] for line in mounts]
    for target in sorted((t for t in targets if t.startswith(prefix)), key=len, reverse=True):
        run(["umount", "--lazy", target])


@contextlib.contextmanager
def session(root: Path) -> Iterator[Buildah]:
    """A fresh storage for one batch of builds, removed afterwards whatever happens."""
    buildah = Buildah(root)
    if root.exists():
        buildah.clean()  # left by a build that was killed
    root.mkdir(parents=True)
    try:
        yield buildah
    finally:
        try:
            buildah.clean()
        except BuildError:
            _unmount_below(root)
            shutil.rmtree(root, ignore_errors=True)
