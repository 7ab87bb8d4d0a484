"""The CLI and the examples start without TensorFlow's start-up lines, in
child processes too, and show them when the user asks for them."""

import os
import subprocess
import sys

import pytest

# Start-up output is a property of fresh processes.
pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = ("from monolith_tf.quiet_start import import_tensorflow\n"
        "tf = import_tensorflow()\n"
        "print(tf.reduce_sum(tf.ones([3])).numpy())\n")


def _run(level):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          env=env, timeout=120)


def test_no_start_up_lines_by_default_nor_in_children_that_inherit_level_3():
    for level in (None, "3"):
        run = _run(level)
        assert run.returncode == 0 and run.stdout.strip() == "3.0", run.stderr[-2000:]
        assert run.stderr == "", (level, run.stderr[-2000:])


def test_a_lower_level_the_user_set_shows_them():
    run = _run("0")
    assert run.returncode == 0 and "oneDNN" in run.stderr, run.stderr[-2000:]


def test_an_import_that_fails_gives_its_stderr_back(tmp_path):
    broken = tmp_path / "tensorflow"
    broken.mkdir()
    (broken / "__init__.py").write_text("import sys\nsys.stderr.write('loading...\\n')\n"
                                        "raise ImportError('broken build')\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = f"{tmp_path}:{REPO}"
    run = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 1
    assert "loading..." in run.stderr and "ImportError: broken build" in run.stderr
