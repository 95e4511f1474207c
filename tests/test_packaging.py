"""What the sdist and the wheel carry: the sdist runs the test suite; the wheel ships the three
packages, the license and typing markers, and no extra for what it does not ship."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("eventbroker", "cache", "jobs")

pytest.importorskip("build", reason="the build frontend is in the dev dependency group")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "deprecated" not in result.stderr.lower(), result.stderr[-3000:]
    return out


def _sources(folder: str) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.mark.slow
def test_the_sdist_carries_everything_the_test_suite_and_the_demo_need(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {"LICENSE", "README.md", "pyproject.toml", "MANIFEST.in"}
    for folder in ("tests", "samples", "scripts", "docs", "bench", *PACKAGES):
        needed |= _sources(folder)
    assert "tests/conftest.py" in needed
    assert sorted(needed - names) == []
    assert not [name for name in names if name.endswith(".pyc") or name.endswith(".sqlite3")]


@pytest.mark.slow
def test_the_wheel_ships_the_packages_the_license_and_no_samples(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    tops = {
        name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")
    }
    assert tops == set(PACKAGES)
    assert {f"{p}/py.typed" for p in PACKAGES} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata.splitlines()
    assert not [line for line in metadata.splitlines() if line.startswith("Classifier: License ::")]
    extras = {
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Provides-Extra:")
    }
    assert {"redis", "servicebus", "loopback", "jobs", "postgres"} <= extras
    assert not extras & {"samples", "dev"}  # the repository's dependency groups, not extras
