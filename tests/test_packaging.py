"""Packaging: a non-editable install works from any directory (paths resolve from the working directory, package
data ships), and the layers' import contract holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_a_non_editable_install_serves_from_its_working_directory(tmp_path):
    source, site = tmp_path / "source", tmp_path / "site"  # a copy, so the build leaves nothing in the repo
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, source / name)
    for package in ("fraudmon", "stream_app", "training"):
        shutil.copytree(PROJECT_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(source)], check=True, capture_output=True, timeout=300)
    assert (site / "stream_app" / "lua" / "aggregates.lua").is_file()
    assert (site / "fraudmon" / "tools" / "kafka-pom.xml").is_file()
    home = tmp_path / "home"
    shutil.copytree(PROJECT_ROOT / "config", home / "config")
    (home / "models").mkdir()
    for name in ("default.onnx", "default.json"):
        shutil.copy(PROJECT_ROOT / "models" / name, home / "models" / name)
    code = (
        "import sys, fraudmon, stream_app.runtime as runtime\n"
        "from fraudmon.core.config import load_settings\n"
        "from stream_app.state import InMemoryStateStore\n"
        f"assert fraudmon.__file__.startswith({str(site)!r}), fraudmon.__file__\n"
        "settings = load_settings()\n"
        "engine = runtime.build_engine(settings, store=InMemoryStateStore())\n"
        "print(engine.model.path)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf2onnx'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FRAUDMON_HOME", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=home, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(result.stdout.strip()) == home / "models" / "default.onnx"
    cli = subprocess.run([sys.executable, "-m", "fraudmon.cli", "--help"], cwd=home, env=env, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0 and "worker" in cli.stdout, cli.stderr[-2000:]


def test_import_contract_holds():
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
