"""The five wheels are complete: installed in a fresh virtualenv outside the checkout, ``dx`` runs
from them and finds everything it reads (the error-code reference, the migrations, the console);
with the four runtime wheels only, ``dx demo`` says that the development kit is missing.

Offline: the wheels are built with this virtualenv's setuptools, and the fresh virtualenv reaches
the third-party packages through a .pth line naming this virtualenv's site-packages. Only a real
site directory has its .pth files read, so the editable installs' paths to the checkout stay out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from dx.shared.errors import render_error_codes_markdown

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ("shared", "workers", "scheduler", "cli", "devkit")
#: the version the wheels carry
VERSION = tomllib.loads((ROOT / "cli" / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
#: pip without this machine's configuration (indexes, find-links, constraints): nothing from the network
PIP_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "DX_", "PYTHON"))} | {
    "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
#: What the installed dx reports about itself: where it is, its version, the files it ships.
PROBE = """
import json
from importlib import metadata, resources
import dx, dx.cli, dx.shared, dx.scheduler
print(json.dumps({
    "dx_path": [str(p) for p in dx.__path__],
    "files": {m.__name__: m.__file__ for m in (dx.cli, dx.shared, dx.scheduler)},
    "migrations": sorted(e.name for e in resources.files("dx.shared").joinpath("migrations").iterdir()),
    "console": sorted(e.name for e in resources.files("dx.scheduler").joinpath("console").iterdir()),
    "licenses": {d: metadata.metadata(d)["License-Expression"]
                 for d in ("dx-shared", "dx-workers", "dx-scheduler", "dx-cli", "dx-devkit")},
    "license_files": sorted(str(f) for f in metadata.files("dx-cli") if f.name == "LICENSE"),
}))
"""


def _run(*args: str | Path, cwd: Path, env: dict[str, str] = PIP_ENV) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv outside the checkout with the five wheels installed."""
    tmp = tmp_path_factory.mktemp("wheels")
    assert ROOT not in tmp.parents
    # the sources copied out, so that the builds leave nothing in the checkout (LICENSE links followed)
    for name in DISTRIBUTIONS:
        shutil.copytree(ROOT / name, tmp / "src" / name,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
         *(tmp / "src" / name for name in DISTRIBUTIONS), cwd=tmp)
    wheels = sorted((tmp / "dist").glob("*.whl"))
    assert len(wheels) == len(DISTRIBUTIONS)

    env = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", env, cwd=tmp)
    python = env / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp).strip())
    (site / "third_party.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # first the four runtime wheels, as the image installs them: dx says that the demo is not there
    runtime = [w for w in wheels if not w.name.startswith("dx_devkit-")]
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", *runtime, cwd=tmp)
    demo = subprocess.run([env / "bin" / "dx", "demo"], cwd=tmp, env=PIP_ENV, capture_output=True, text=True,
                          timeout=60)
    assert demo.returncode == 2, demo.stderr
    assert demo.stderr.startswith("dx: dx generate and dx demo come with the development kit")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", *wheels, cwd=tmp)
    return env


def test_the_installed_wheels_run_dx_outside_the_checkout(venv: Path, tmp_path: Path):
    env = {k: v for k, v in PIP_ENV.items() if not k.startswith("PIP_")}
    dx = venv / "bin" / "dx"

    # dx and its parts import from the fresh virtualenv, never from the checkout
    report = json.loads(_run(venv / "bin" / "python", "-c", PROBE, cwd=tmp_path, env=env))
    site = str(venv / "lib")
    assert all(p.startswith(site) for p in report["dx_path"]), report["dx_path"]
    assert all(f.startswith(site) for f in report["files"].values()), report["files"]

    # the files dx reads are in the wheels
    assert report["migrations"] == sorted(p.name for p in (ROOT / "shared/dx/shared/migrations").glob("*.sql"))
    assert report["console"] == sorted(p.name for p in (ROOT / "scheduler/dx/scheduler/console").iterdir()
                                       if p.is_file())
    assert set(report["licenses"].values()) == {"MIT"}
    assert report["license_files"], "the wheel carries the LICENSE"

    # `dx --version` is the installed version
    assert _run(dx, "--version", cwd=tmp_path, env=env) == f"dx {VERSION}\n"
    # `dx docs` prints the reference (nothing to write outside a checkout), the same as the checkout's
    assert _run(dx, "docs", cwd=tmp_path, env=env) == render_error_codes_markdown()
    assert (ROOT / "docs" / "error-codes.md").read_text(encoding="utf-8") == render_error_codes_markdown()
    assert list(tmp_path.iterdir()) == []
    # and --check needs the file to compare with
    done = subprocess.run([dx, "docs", "--check"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "-o FILE" in done.stderr
