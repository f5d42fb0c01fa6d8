"""The lock files pin, with hashes, every package that the distributions need, and no other: the
runtime lock (the image's) holds exactly dx-cli's dependencies, without the embedded PostgreSQL
or the test tools; the workspace lock everything ``.[test,demo,bench]`` needs. Read from the installed
distributions' metadata, so no network."""

from __future__ import annotations

import re
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
#: Our own distributions: installed from the checkout, never from a lock.
OURS = {"dataexchange", "dx-shared", "dx-workers", "dx-scheduler", "dx-cli", "dx-devkit"}


def _lock(name: str) -> dict[str, tuple[str, int]]:
    """The lock file's packages: {name: (version, number of hashes)}."""
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=\S)", (ROOT / name).read_text(encoding="utf-8")):
        pin = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if pin:
            pins[canonicalize_name(pin[1])] = (pin[2], len(re.findall(r"--hash=sha256:[0-9a-f]{64}", block)))
    return pins


def _closure(name: str, extras: set[str]) -> dict[str, str]:
    """Every distribution that ``name[extras]`` needs, by the installed metadata: {name: version}."""
    found: dict[str, str] = {}
    todo = [(canonicalize_name(name), frozenset(extras))]
    seen = set()
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        dist_name, wanted = item
        dist = distribution(dist_name)
        found[dist_name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return found


def test_the_runtime_lock_is_exactly_the_runtime_distributions_needs():
    # Given: what dx-cli (and so shared, workers, scheduler) needs, as installed
    needed = {n: v for n, v in _closure("dx-cli", set()).items() if n not in OURS}
    lock = _lock("requirements-runtime.lock")
    # Then: the lock holds exactly these, at the installed versions, each with its hashes
    assert set(lock) == set(needed), (sorted(set(needed) - set(lock)), sorted(set(lock) - set(needed)))
    assert {n: v for n, (v, _) in lock.items()} == needed
    assert all(hashes for _, hashes in lock.values())
    # and none of the demo's or the tests' packages
    assert not {"pgserver", "pytest", "dx-devkit", "aiosmtpd", "setuptools"} & set(lock)


def test_the_workspace_lock_pins_everything_the_tests_and_the_demo_need():
    needed = {n: v for n, v in _closure("dataexchange", {"test", "demo", "bench"}).items() if n not in OURS}
    lock = _lock("requirements.lock")
    assert set(lock) == set(needed), (sorted(set(needed) - set(lock)), sorted(set(lock) - set(needed)))
    assert {n: v for n, (v, _) in lock.items()} == needed
    assert all(hashes for _, hashes in lock.values())
    # the two locks agree on every version
    runtime = _lock("requirements-runtime.lock")
    assert {n: lock[n][0] for n in runtime} == {n: v for n, (v, _) in runtime.items()}


def test_the_embedded_postgresql_is_an_extra_of_the_demo_only():
    # dx-shared offers it as the extra `embedded`; the runtime distributions never pull it in
    shared = [Requirement(r) for r in distribution("dx-shared").requires or []]
    assert any(r.name == "pgserver" and r.marker is not None and r.marker.evaluate({"extra": "embedded"})
               for r in shared)
    assert "pgserver" not in _closure("dx-cli", set())
    assert "pgserver" not in _closure("dx-devkit", set())
    assert "pgserver" in _closure("dataexchange", {"demo"})
