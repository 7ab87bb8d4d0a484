"""``python -m experiments {all,collisions,online,memory}``:
runs the experiments and writes the report (see the package doc).

    python -m experiments all [--out docs] [--seeds 5] [--quick]
    python -m experiments report [--out docs]   # markdown + plots from the JSON
"""

import argparse
import os
import sys
import time

from experiments import EXPERIMENTS, collision_setups, online_setups, report


def run_collisions(seeds, quick, verbose):
    from experiments import collisions

    section = {}
    for setup in collision_setups(quick):
        per_seed = [collisions.run_seed(setup, seed, verbose=verbose) for seed in seeds]
        section[setup.name] = {"seeds": list(seeds), "per_seed": per_seed,
                               "epochs": setup.epochs}
    return section


def run_online(seeds, quick, verbose):
    from experiments import online

    section = {}
    for setup in online_setups(quick):
        per_seed = [online.run_seed(setup, seed, verbose=verbose) for seed in seeds]
        arms = online.arm_names(setup)
        section[setup.name] = {"seeds": list(seeds), "arms": arms, "per_seed": per_seed,
                               "intervals": list(setup.intervals)}
    return section


def run_memory(seeds, quick, verbose):
    from experiments import memory

    # Expiry drops rows idle for 30 steps: a run needs well over 30.
    steps, thresholds = (60, (0, 5)) if quick else (100, memory.THRESHOLDS)
    per_seed = [memory.run_seed(seed, steps, thresholds, verbose=verbose) for seed in seeds]
    return {"seeds": list(seeds), "steps": steps, "per_seed": per_seed}


RUNNERS = {"collisions": run_collisions, "online": run_online, "memory": run_memory}


def run(which=EXPERIMENTS, out_dir="docs", seeds=None, quick=False, verbose=True,
        command=None):
    """Runs the named experiments; writes the report into ``out_dir``;
    returns the results dict (what ``experiments.json`` holds)."""
    seeds = list(seeds if seeds is not None else range(2 if quick else 5))
    if len(seeds) < 2:
        raise ValueError("the verdicts compare seeds: give at least 2")
    started = time.monotonic()
    results = {"meta": {"quick": quick, "seeds": seeds, "machine": report.machine(),
                        "command": command or "python -m experiments "
                        + " ".join(which), "experiment_seconds": {}}}
    for name in which:
        began = time.monotonic()
        if verbose:
            print(f"{name}: seeds {seeds}", flush=True)
        results[name] = RUNNERS[name](seeds, quick, verbose)
        results["meta"]["experiment_seconds"][name] = time.monotonic() - began
    results["meta"]["seconds"] = time.monotonic() - started
    path = report.write(report.rejudge(results), out_dir)
    if verbose:
        print(f"wrote {path} ({results['meta']['seconds'] / 60:.1f} min)", flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("all",) + EXPERIMENTS + ("report",),
                        help="what to run; 'report' rewrites the markdown and plots from "
                        "the JSON of a previous run in --out")
    parser.add_argument("--out", default="docs", help="directory of the report (default docs)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="the reduced run of the test suite (small data, few arms)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.experiment == "report":
        out = os.path.abspath(args.out)
        results = report.rejudge(report.load(out, quick=args.quick))
        print("wrote", report.write(results, out))
        return
    which = EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    command = "python -m experiments " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    run(which, os.path.abspath(args.out), None if args.seeds is None else range(args.seeds),
        quick=args.quick, verbose=not args.quiet, command=command)


if __name__ == "__main__":
    main()
