"""Writes that run out of disk space: a sparse save, a dense save, a serving
export, an embedded-log append and the training worker's saves. Each runs in
a child process with a private mount namespace holding a small tmpfs
(``unshare --mount``, as root or, elsewhere, in a user namespace), so the
real disk is never filled and nothing stays mounted after the test."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCENARIOS = os.path.join(HERE, "disk_full_scenarios.py")


def _namespace_command(mount_points, size, command):
    """``command`` in a private mount namespace with a tmpfs of ``size`` at
    each of ``mount_points``."""
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    mounts = " && ".join(f'mount -t tmpfs -o size={size} monolith-test "{point}"'
                         for point in mount_points)
    script = f'{mounts} && exec "$@"'
    return ["unshare", "--mount", *user, "sh", "-c", script, "sh", *command]


def _unavailable(reason):
    """Skips where a small private tmpfs cannot be mounted; under CI
    (``CI=true``, as ``.ci/run`` sets) that path is reachable, so a missing
    mount is a failure there, never a silent skip."""
    message = f"cannot mount a tmpfs in a private mount namespace here: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the full-disk tests must run)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def small_disks(tmp_path_factory):
    probe = tmp_path_factory.mktemp("probe")
    try:
        result = subprocess.run(_namespace_command([probe], "1m", ["true"]),
                                capture_output=True, text=True, timeout=60)
    except FileNotFoundError as error:  # no util-linux unshare on this machine
        _unavailable(error)
    if result.returncode != 0:
        _unavailable(f"(needs root or user namespaces): {result.stderr.strip()}")
    return tmp_path_factory


SCENARIO_NAMES = ["sparse", "dense", "export", "log_append", "worker_policy"]


@pytest.fixture(scope="module")
def scenario_runs(small_disks):
    """Every scenario in one child process (one TensorFlow start), each on a
    tmpfs of its own in the child's namespace: {scenario: (disk, output)}."""
    disks = {name: small_disks.mktemp(name) for name in SCENARIO_NAMES}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    arguments = [str(value) for name in SCENARIO_NAMES for value in (name, disks[name])]
    result = subprocess.run(
        _namespace_command(list(disks.values()), "48m", [sys.executable, SCENARIOS, *arguments]),
        capture_output=True, text=True, env=env, timeout=600)
    return {name: (disk, result) for name, disk in disks.items()}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_out_of_space(scenario_runs, scenario):
    disk, result = scenario_runs[scenario]
    assert f"OK {scenario}" in result.stdout.splitlines(), \
        result.stdout[-3000:] + result.stderr[-5000:]
    # The tmpfs was the child's: the directory under it is empty here.
    assert os.listdir(disk) == []
