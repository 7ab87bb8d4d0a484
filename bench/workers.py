"""Runs a benchmark's measurements in fresh worker processes (so each system
starts with clean memory and its own TensorFlow) and reads back one JSON
result line each.

``BENCH_IN_PROCESS=1`` runs each worker by calling its script's
``main(argv)`` in this process instead, where this process already has the
worker's environment (its Python, the variables it sets, e.g. tf_keras for
the training bench): the figures lose their isolation
(memory, warm caches), so it is for the test suite's smoke runs, which check
that a bench runs end to end, not its figures."""

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import threading
import time

_PREFIX = "RESULT "


def emit(result):
    """Worker side: prints the result dict on the line the parent reads."""
    print(_PREFIX + json.dumps(result), flush=True)


def run(script, args, what, env=None, python=None):
    """Parent side: runs ``script`` with ``args`` in a new Python process
    (``python``, default this one's) and returns its result dict; on failure
    prints the worker's stderr tail and exits naming ``what``."""
    same_environment = all(os.environ.get(key) == value for key, value in (env or {}).items())
    if os.environ.get("BENCH_IN_PROCESS") == "1" and python is None and same_environment:
        return _run_in_process(script, args, what)
    command = [python or sys.executable, os.path.abspath(script)] + [str(a) for a in args]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    out = subprocess.run(command, capture_output=True, text=True, env=environment)
    lines = [line for line in out.stdout.splitlines() if line.startswith(_PREFIX)]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"{what} failed")
    return json.loads(lines[-1][len(_PREFIX):])


def _run_in_process(script, args, what):
    """``run`` without a new process (module doc): the script's module is
    imported by name from its directory and its ``main`` called with
    ``args``; its printed result line is read back."""
    directory = os.path.dirname(os.path.abspath(script))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module = importlib.import_module(os.path.splitext(os.path.basename(script))[0])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        module.main([str(a) for a in args])
    lines = [line for line in printed.getvalue().splitlines() if line.startswith(_PREFIX)]
    if not lines:
        raise SystemExit(f"{what} failed: no result line")
    return json.loads(lines[-1][len(_PREFIX):])


class PeakSampler:
    """Largest resident set size seen while active, sampled every ms."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self):
        self.start_rss = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
