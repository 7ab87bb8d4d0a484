"""Shared fixtures and the test tiers. TensorFlow tests import monolith_tf
lazily so that the core tests (tests/core) also run where only the core
extension is built.

Tiers (README, "Set up, run, test"): ``make check`` runs the unit tier, tests marked
neither ``slow`` nor ``integration``; they run in this process and start no
process and open no socket. Under ``make check`` (``MONOLITH_UNIT_TIER=1``)
an audit hook holds them to that: a unit test that starts a process or binds
or connects a socket fails, naming what it did, so the tier cannot drift.
Tests using the Kafka mock broker (the ``mock_broker`` fixture, or the
``log`` fixture's ``kafka`` case) are integration tests by that fixture.
``make test`` runs every tier."""

import os
import random
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Audit events that leave the process: new processes, and sockets bound or
# connected (servers, clients, brokers).
_OUTSIDE_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.posix_spawn", "os.fork", "os.forkpty", "os.exec",
    "os.spawn", "socket.bind", "socket.connect"})
_unit_tier = os.environ.get("MONOLITH_UNIT_TIER") == "1"
_current_test = {"id": None, "events": []}


def _audit(event, args):
    if event in _OUTSIDE_EVENTS and _current_test["id"] is not None:
        _current_test["events"].append(event)
        raise RuntimeError(f"unit tier: {_current_test['id']} used {event}; mark it "
                           "@pytest.mark.integration (tests/conftest.py)")


if _unit_tier:
    sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _stays_in_process(request):
    """Under the unit tier, fails a test that left the process even where
    the code under test caught the audit hook's error."""
    if not _unit_tier:
        yield
        return
    _current_test.update(id=request.node.nodeid, events=[])
    try:
        yield
    finally:
        _current_test["id"] = None
    if _current_test["events"]:
        pytest.fail(f"unit tier: {request.node.nodeid} used {sorted(set(_current_test['events']))}"
                    "; mark it @pytest.mark.integration")


def pytest_collection_modifyitems(config, items):
    """Marks tests of the Kafka mock broker (a broker process) as
    integration tests; runs slow tests first, then integration ones, so that
    parallel workers (pytest-xdist) do not end on one long test."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "mock_broker" in getattr(item, "fixturenames", ()) or params.get("log") == "kafka":
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 item.get_closest_marker("integration") is None))


def pytest_configure(config):
    """Chooses the kill-point rotation's seed (tests/faults/test_kill_points.py)
    once per run, before pytest-xdist starts its workers (they inherit it
    through the environment), unless MONOLITH_KILL_SEED is given."""
    if not os.environ.get("MONOLITH_KILL_SEED"):
        os.environ["MONOLITH_KILL_SEED"] = str(random.SystemRandom().randrange(10**6))


def _rotation_line():
    seed = os.environ["MONOLITH_KILL_SEED"]
    kills = "all kills" if os.environ.get("MONOLITH_KILLS") == "all" else "one kill per point"
    return (f"kill-point rotation: seed {seed}, {kills} (rerun it with "
            f"MONOLITH_KILL_SEED={seed}; every kill: make test-faults)")


def pytest_report_header(config):
    return _rotation_line()


def pytest_terminal_summary(terminalreporter):
    """The rotation's seed again at the end: ``-q`` hides the header."""
    terminalreporter.write_line(_rotation_line())
