"""The package metadata builds without warnings (issue 21: every install printed setuptools'
deprecation of `license = { text = ... }` four times)."""
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert tuple(int(p) for p in re.search(r">=\s*([\d.]+)", setuptools).group(1).split(".")) >= (77,)


def test_building_the_wheel_prints_no_warning(tmp_path):
    """The build backend's own output, verbose, with this environment's setuptools (no network)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "metaad_dist", src / "metaad_dist", ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    output = run.stdout + run.stderr
    assert "Warning:" not in output and "deprecated" not in output.lower(), output[-3000:]
    assert list((tmp_path / "wheel").glob("metaad_dist-*.whl"))
