"""TensorFlow's parameter-server runtime for sharded tables: start task
servers with the op library loaded, check a cluster is reachable, connect a
chief (``ParameterServerStrategy``), and a localhost cluster for trying it.

    python -m monolith_tf.cluster serve --cluster '<json>' --job ps --task 0
    TF_CONFIG='{"cluster": {...}, "task": {"type": "ps", "index": 0}}' \
        python -m monolith_tf.cluster serve

runs one task (``ps`` or ``worker``) of a cluster spec until killed. Every
process of the cluster must load monolith_tf's op library (the PS tasks run
the table kernels; workers build and partition graphs that name the ops),
which is why tasks run through this module rather than a bare
``tf.distribute.Server``. Servers listen where the spec says; the localhost
cluster binds 127.0.0.1 only.
"""

import argparse
import json
import socket
import subprocess
import sys
import time

import tensorflow as tf

from monolith_tf import ops  # noqa: F401 - loads the op library in this process


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_from_tf_config(environ=None):
    """(cluster spec, task type, task index) from the ``TF_CONFIG`` variable
    (``{"cluster": {...}, "task": {"type": "ps", "index": 0}}``)."""
    import os

    text = (environ if environ is not None else os.environ).get("TF_CONFIG")
    if not text:
        raise ValueError("TF_CONFIG is not set")
    try:
        config = json.loads(text)
        task = config.get("task", {})
        return config["cluster"], task.get("type", "chief"), int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not a cluster config: {error}") from error


def check_cluster_spec(cluster):
    """Raises ValueError unless ``cluster`` ({job: [host:port, ...]}) has
    at least one ``ps`` task and only known jobs."""
    if not isinstance(cluster, dict):
        raise ValueError(f"a cluster spec is a dict of job -> [host:port], got {cluster!r}")
    unknown = sorted(set(cluster) - {"chief", "worker", "ps", "evaluator"})
    if unknown:
        raise ValueError(f"unknown jobs {unknown} in the cluster spec")
    if not cluster.get("ps"):
        raise ValueError("the cluster spec has no 'ps' tasks: sharded tables need at least "
                         "one parameter server")


def wait_for_cluster(cluster, timeout=30.0, jobs=("ps", "worker")):
    """Waits until every task of ``jobs`` accepts connections; raises
    TimeoutError naming the first unreachable task after ``timeout`` seconds
    (TensorFlow itself would wait for it without bound)."""
    deadline = time.monotonic() + timeout
    for job in jobs:
        for task, address in enumerate(cluster.get(job, [])):
            host, _, port = address.rpartition(":")
            while True:
                try:
                    with socket.create_connection((host, int(port)), timeout=1.0):
                        break
                except OSError as error:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{job} task {task} at {address} unreachable after "
                                           f"{timeout:g} s: {error}") from error
                    time.sleep(0.1)


def connect(cluster, timeout=30.0):
    """This process as the cluster's chief: checks the spec, waits (bounded)
    for the tasks, returns a ``tf.distribute.experimental.ParameterServerStrategy``.
    Tables created with ``ShardedHashTable(devices=ps_devices(len(cluster["ps"])))``
    then live on the PS tasks."""
    check_cluster_spec(cluster)
    if not cluster.get("chief"):
        raise ValueError("the cluster spec has no 'chief' task (the process that connects)")
    wait_for_cluster(cluster, timeout)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc")
    return tf.distribute.experimental.ParameterServerStrategy(resolver)


class LocalCluster:
    """``num_ps`` PS tasks and ``num_workers`` workers as processes on
    127.0.0.1 (free ports), plus a chief address for this process. A
    context manager; ``stop()`` kills the tasks."""

    def __init__(self, num_ps=2, num_workers=1, start_timeout=60.0):
        if num_ps < 1 or num_workers < 1:
            raise ValueError(f"need >= 1 ps and >= 1 worker, got {num_ps} and {num_workers}")
        self.cluster = {"ps": [f"127.0.0.1:{_free_port()}" for _ in range(num_ps)],
                        "worker": [f"127.0.0.1:{_free_port()}" for _ in range(num_workers)],
                        "chief": [f"127.0.0.1:{_free_port()}"]}
        self.processes = {}
        for job in ("ps", "worker"):
            for task in range(len(self.cluster[job])):
                self._start(job, task)
        try:
            wait_for_cluster(self.cluster, start_timeout)
        except TimeoutError:
            self.stop()
            raise

    def _start(self, job, task):
        self.processes[(job, task)] = subprocess.Popen(
            [sys.executable, "-m", "monolith_tf.cluster", "serve", "--cluster",
             json.dumps(self.cluster), "--job", job, "--task", str(task)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, job, task):
        """Kills one task with SIGKILL (fault tests)."""
        process = self.processes[(job, task)]
        process.kill()
        process.wait()

    def restart(self, job, task, timeout=60.0):
        """Starts a killed task again at its address; waits until it listens."""
        self._start(job, task)
        wait_for_cluster({job: [self.cluster[job][task]]}, timeout, jobs=(job,))

    def stop(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(cluster, job, task):
    """Runs task ``task`` of ``job`` until the process is killed."""
    check_cluster_spec(cluster)
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job,
                                  task_index=task, protocol="grpc", start=True)
    server.join()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run one PS or worker task")
    serve_parser.add_argument("--cluster", help="cluster spec as JSON (default: TF_CONFIG's "
                                                "cluster, task type and index)")
    serve_parser.add_argument("--job", choices=("ps", "worker"))
    serve_parser.add_argument("--task", type=int)
    args = parser.parse_args(argv)
    try:
        if args.cluster is None:
            spec, job, task = cluster_from_tf_config()
        else:
            spec, job, task = json.loads(args.cluster), args.job, args.task
            if job is None or task is None:
                raise ValueError("--cluster needs --job and --task")
        serve(spec, job, task)
    except (ValueError, tf.errors.OpError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
