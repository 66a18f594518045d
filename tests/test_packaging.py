"""pyproject.toml: `pip install .` installs the reid package whole, with the requirements.txt
ranges and the three console commands (built offline from a copy of the tree)."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

COMMANDS = {"reid-train": "reid.cli.train:run", "reid-attack": "reid.cli.attack:run", "reid-sort": "reid.cli.sort:run"}


def requirement_ranges():
    lines = (line.split("#")[0].strip() for line in open(os.path.join(ROOT, "requirements.txt")))
    return sorted(line for line in lines if line)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel .` builds (no network, the environment's setuptools), from a copy of
    what the build reads, so the checkout gets no build/ or egg-info folders."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE.txt"):
        shutil.copy(os.path.join(ROOT, name), src)
    shutil.copytree(os.path.join(ROOT, "reid"), src / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True, capture_output=True)
    (path,) = out.glob("adv_reid_toolkit-*.whl")
    return path


def test_wheel_holds_every_module_the_requirements_and_the_commands(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    tree = {os.path.relpath(os.path.join(d, f), ROOT) for d, _, files in os.walk(os.path.join(ROOT, "reid"))
            for f in files if f.endswith(".py")}
    assert tree == {n for n in names if n.endswith(".py")}
    requires = sorted(line.split(": ", 1)[1] for line in metadata.splitlines()
                      if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert requires == [r for r in requirement_ranges() if not r.startswith("timm")]
    assert "Requires-Dist: timm>=1.0; extra == \"timm\"" in metadata
    import reid
    assert f"Version: {reid.__version__}" in metadata
    scripts = dict(line.split(" = ") for line in entry_points.splitlines() if " = " in line)
    assert scripts == COMMANDS


def test_installed_commands_run_from_the_installed_package(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    "--disable-pip-version-check", str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    for command in COMMANDS:
        proc = subprocess.run([str(target / "bin" / command), "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"usage: {command}")
    proc = subprocess.run([sys.executable, "-c", "import reid.cli.train as m; print(m.__file__)"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.startswith(str(target))  # the installed copy, not the checkout
