"""monolith_tf installed like a library: importable from any directory in the
project's virtualenv, and as a wheel in a fresh virtualenv holding only the
pinned TensorFlow, where the table quickstart runs."""

import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

# Fresh processes and a fresh virtualenv.
pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env_without_pythonpath():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _pinned_tensorflow():
    with open(os.path.join(REPO, "requirements.txt")) as f:
        return next(line.strip() for line in f if line.startswith("tensorflow=="))


def test_importable_from_any_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import monolith_tf as mt; print(mt.__file__); "
         "print(mt.HashTable(4).state_dim)"],
        cwd=tmp_path, env=_env_without_pythonpath(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    location, state_dim = result.stdout.split()
    assert os.path.dirname(location) == os.path.join(REPO, "monolith_tf")
    assert state_dim == "4"  # adagrad: one accumulator per float


@pytest.mark.slow
def test_wheel_runs_the_quickstart_in_a_fresh_virtualenv(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
         str(dist), REPO], env=dict(_env_without_pythonpath(), MONOLITH_BUILD_DIR="build"),
        capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheels = glob.glob(str(dist / "*.whl"))
    assert len(wheels) == 1
    tf_version = _pinned_tensorflow().split("==")[1]
    name = os.path.basename(wheels[0])
    # Tagged for the TensorFlow it was built against; platform-specific.
    assert re.fullmatch(rf"monolith_tf-[0-9.]+\+tf{re.escape(tf_version)}-cp311-cp311-linux_"
                        r"x86_64\.whl", name), name
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
    assert "monolith_tf/libmonolith_ops.so" in names
    assert any(n.startswith("monolith_tf/_core") and n.endswith(".so") for n in names)
    # The library only: no experiments, tests, benches or examples.
    top_levels = {n.split("/")[0] for n in names}
    assert {t for t in top_levels if not t.endswith(".dist-info")} == {"monolith_tf"}, top_levels
    assert "monolith_tf/sync/publisher.py" in names and "monolith_tf/export_format.py" in names

    # A virtualenv without pip of its own: this environment's pip installs
    # into it (--python), and --no-compile skips bytecode for all of
    # TensorFlow's files up front; the quickstart compiles what it imports.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile"]
    install_tf = subprocess.run(pip + [_pinned_tensorflow()], capture_output=True, text=True,
                                timeout=1500)
    assert install_tf.returncode == 0, install_tf.stderr[-2000:]
    # --no-index: the wheel's requirements must already be met by TensorFlow.
    install = subprocess.run(pip + ["--no-index", wheels[0]], capture_output=True, text=True,
                             timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]

    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    shutil.copy(os.path.join(REPO, "examples", "table_quickstart.py"), run_dir)
    result = subprocess.run([python, "table_quickstart.py"], cwd=run_dir,
                            env=_env_without_pythonpath(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SavedModel at" in result.stdout and "served accuracy" in result.stdout
    where = subprocess.run([python, "-c", "import importlib.util, monolith_tf; "
                            "print(monolith_tf.__file__); "
                            "print(importlib.util.find_spec('tensorflow').origin)"],
                           cwd=run_dir, env=_env_without_pythonpath(), capture_output=True,
                           text=True, timeout=300)
    # Both from the fresh virtualenv, not from this one.
    lines = where.stdout.split()
    assert len(lines) == 2 and all(line.startswith(str(venv)) for line in lines), \
        where.stdout + where.stderr
