"""SIGTERM from outside, as an operator sends it: the tests start a training
worker in a child process (this file run as a script), wait until it says
``ready`` (it has trained, so its signal handlers are installed), signal it
and read the JSON it prints after the worker stopped. The pytest process
itself is never signalled."""

import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def signalled_run(scenario, directory, timeout=180):
    """Runs ``scenario`` in a child, sends it SIGTERM once it is ready;
    returns the JSON it printed last. Fails the calling test with the
    child's stderr if it exits early or unsuccessfully."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([REPO, HERE, os.path.join(HERE, "streaming")]))
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), scenario,
                                str(directory)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = process.stdout.readline()
        if ready.strip() != "ready":
            process.kill()
            _, err = process.communicate(timeout=60)
            raise AssertionError(f"{scenario}: child never got ready ({ready!r}): {err[-3000:]}")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"{scenario}: exit {process.returncode}: {err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _ready_after(steps):
    from monolith_tf.step_task import StepTask

    class ReadyAfter(StepTask):
        def after_step(self, worker):
            if worker.step == steps:
                print("ready", flush=True)

    return ReadyAfter()


def _file_stream(directory):
    """An unbounded stream of ratings, stopped by the signal: the final save
    pairs a dense checkpoint with a sparse one at the last step."""
    from monolith_tf.sparse_checkpoint import list_checkpoints, read_manifest
    from test_training import BATCH, fresh_model, stream_of, worker, write_ratings

    data = write_ratings(os.path.join(directory, "u.data"), 10 * BATCH)
    trainer = worker(fresh_model(), os.path.join(directory, "signalled"),
                     tasks=[_ready_after(3)])
    result = trainer.train(stream_of(data))
    dense = trainer.checkpoint_policy.dense
    dense_step, sequence = dense.peek(dense.checkpoints()[-1])
    sparse = [path for seq, _, path in list_checkpoints(trainer.checkpoint_policy.sparse.directory)
              if seq == sequence]
    return {"stop_reason": result["stop_reason"], "steps": result["steps"],
            "dense_step": dense_step,
            "sparse_steps": [read_manifest(path)["metadata"]["step"] for path in sparse],
            "handler_restored": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}


def _quiet_stream(directory):
    """A worker waiting on a log with no new records (no budget, no idle
    timeout): only the signal ends it."""
    from test_dataset import BATCH, compiled, fill, stream_of

    from monolith_tf.streaming.embedded_log import EmbeddedLog
    from monolith_tf.training import TrainingWorker

    log = EmbeddedLog(os.path.join(directory, "log"))
    fill(log, 2 * BATCH)
    trainer = TrainingWorker(compiled(), os.path.join(directory, "run"), verbose=0,
                             tasks=[_ready_after(2)])
    result = trainer.train(stream_of(log))
    return {"stop_reason": result["stop_reason"], "examples": result["examples"],
            "batch": BATCH, "stream_position": [int(p) for p in trainer.stream_position]}


SCENARIOS = {"file_stream": _file_stream, "quiet_stream": _quiet_stream}

if __name__ == "__main__":
    name, directory = sys.argv[1:]
    print(json.dumps(SCENARIOS[name](directory)), flush=True)
