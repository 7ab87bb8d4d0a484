"""Start-up time of the command line and of the pure-Python imports: how
long a user waits before ``join``, ``replay``, ``inspect --help`` or
``sync-agent --help`` does anything.

Each command runs as a fresh process (``python -m monolith_tf ...``), in
rounds that alternate between this checkout and, with ``--baseline``,
another checkout of the project (e.g. a ``git worktree`` of an older commit
with its native libraries copied in), so both see the same machine load.
``join`` and ``replay`` run for real on a small embedded log (replay of 200
ratings, then a join of what it wrote). Prints one table: the median and
the fastest of the rounds per command, and their ratio to the baseline.

    PYTHONPATH=. .venv/bin/python bench/startup_bench.py [--rounds 5] [--baseline DIR]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMANDS = {
    "--help": ["--help"],
    "inspect --help": ["inspect", "--help"],
    "sync-agent --help": ["sync-agent", "--help"],
    "join --help": ["join", "--help"],
    "replay (200 ratings)": ["replay", "--data", "{ratings}", "--log", "{log}",
                             "--create-topics", "1", "--max-ratings", "200"],
    "join (the replayed log)": ["join", "--log", "{log}", "--state-dir", "{state}",
                                "--actions", "rating,like", "--create-topics", "1",
                                "--idle-timeout", "0.2", "--close-at-end"],
}
IMPORTS = {
    "import monolith_tf": "import monolith_tf",
    "import monolith_tf.streaming.joiner": "import monolith_tf.streaming.joiner",
}


def _ratings(directory):
    path = os.path.join(directory, "u.data")
    with open(path, "w") as out:
        for i in range(200):
            out.write(f"{1 + i % 17}\t{1 + i % 41}\t{1 + i % 5}\t{1_000_000 + 60 * i}\n")
    return path


def _time(argv, cwd):
    env = dict(os.environ, PYTHONPATH=cwd)
    started = time.perf_counter()
    run = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"{argv} in {cwd} failed: {run.stderr[-1500:]}")
    return seconds


def measure(checkout, rounds_by_label, scratch):
    """One round of every command in ``checkout``; appends seconds."""
    ratings = _ratings(scratch)
    log, state = os.path.join(scratch, "log"), os.path.join(scratch, "state")
    for directory in (log, state):
        shutil.rmtree(directory, ignore_errors=True)
    for label, argv in COMMANDS.items():
        argv = [a.format(ratings=ratings, log=log, state=state) for a in argv]
        rounds_by_label.setdefault(label, []).append(
            _time([sys.executable, "-m", "monolith_tf", *argv], checkout))
    for label, code in IMPORTS.items():
        rounds_by_label.setdefault(label, []).append(
            _time([sys.executable, "-c", code], checkout))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", help="another checkout to compare with, same rounds")
    args = parser.parse_args(argv)
    ours, theirs = {}, {}
    with tempfile.TemporaryDirectory(prefix="startup_bench_") as scratch:
        for _ in range(args.rounds):
            measure(REPO, ours, scratch)
            if args.baseline:
                measure(os.path.abspath(args.baseline), theirs, scratch)
    header = f"{'command':28s} {'median s':>9s} {'fastest s':>9s}"
    if args.baseline:
        header += f" {'baseline median s':>17s} {'ratio':>7s}"
    print(header)
    for label, seconds in ours.items():
        line = f"{label:28s} {statistics.median(seconds):9.2f} {min(seconds):9.2f}"
        if args.baseline:
            base = statistics.median(theirs[label])
            line += f" {base:17.2f} {base / statistics.median(seconds):6.1f}x"
        print(line)


if __name__ == "__main__":
    main()
