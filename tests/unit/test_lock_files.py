"""The lock files in requirements/ pin every dependency pyproject.toml declares.

Installs (the Makefile, .ci/run, the images) read only the lock, so a dependency added to
pyproject.toml without `make lock` would silently be missing; a lock whose pin falls outside
a widened or narrowed range would install a version pyproject.toml no longer allows.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from agentpool_dev.paths import REPO_ROOT

LOCKS = REPO_ROOT / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _pins(lock: Path) -> dict[str, Version]:
    """Package -> pinned version for this interpreter (a universal lock may pin a package
    twice, under markers for different Pythons)."""
    pins: dict[str, Version] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker and not Marker(marker).evaluate():
            continue
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        declared += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return declared


@pytest.mark.parametrize(("lock", "extras"), [
    ("dev.txt", ("operator", "runtime", "dev", "bench")), ("runtime.txt", ("runtime",)),
    ("operator.txt", ("operator",))])
def test_every_declared_dependency_is_pinned_within_its_range(
        lock: str, extras: tuple[str, ...]) -> None:
    pins = _pins(LOCKS / lock)
    problems = []
    for requirement in _declared(*extras):
        if canonicalize_name(requirement.name) == "agentpool":
            continue  # the dev extra's reference to the project's own extras
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name} is not in requirements/{lock}")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement.name}=={pinned} is outside {requirement.specifier}")
    assert not problems, "; ".join(problems) + ": run `make lock` and commit requirements/"


def test_every_pin_carries_a_hash() -> None:
    for lock in sorted(LOCKS.glob("*.txt")):
        text = lock.read_text()
        for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
            if _PIN.match(entry.splitlines()[0]):
                assert "--hash=sha256:" in entry, f"{lock.name}: {entry.splitlines()[0]}"


@pytest.mark.parametrize("image_lock", ["runtime.txt", "operator.txt"])
def test_the_images_locks_pin_the_same_versions_as_the_dev_lock(image_lock: str) -> None:
    # The images install these, the suite runs on dev.txt: they must agree.
    dev, image = _pins(LOCKS / "dev.txt"), _pins(LOCKS / image_lock)
    differing = {name: (str(v), str(dev.get(name))) for name, v in image.items()
                 if dev.get(name) != v}
    assert not differing


def test_each_image_carries_only_its_own_programs_dependencies() -> None:
    runtime, operator = _pins(LOCKS / "runtime.txt"), _pins(LOCKS / "operator.txt")
    assert not {"kopf", "lightkube"} & runtime.keys()
    assert not {"asyncpg", "psutil"} & operator.keys()


def test_the_installed_versions_are_the_locked_ones() -> None:
    from importlib.metadata import PackageNotFoundError, version

    pins = _pins(LOCKS / "dev.txt")
    stale = []
    for name, pinned in pins.items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            stale.append(f"{name} missing (locked {pinned})")
            continue
        if installed != pinned:
            stale.append(f"{name} {installed} (locked {pinned})")
    assert not stale, "installed versions differ from the lock, run `make venv`: " + ", ".join(
        stale)


def test_the_images_install_the_locked_versions() -> None:
    # The images' wheelhouse lock is runtime.txt and operator.txt evaluated for the images'
    # Python (plus the build backend): every package both name must have the same version.
    images = REPO_ROOT / "hack" / "images" / "python-requirements.lock"
    runtime = _pins(LOCKS / "runtime.txt") | _pins(LOCKS / "operator.txt")
    wheelhouse = _pins(images)
    assert runtime.keys() <= wheelhouse.keys(), runtime.keys() - wheelhouse.keys()
    differing = {name: (str(v), str(wheelhouse[name])) for name, v in runtime.items()
                 if name in wheelhouse and wheelhouse[name] != v}
    assert not differing, f"run `make lock`: {differing}"
