"""Every subcommand's ``--help`` is what it was before the CLI was rebuilt
from the typed configs (tests/data/cli_help/, captured from the previous
``__main__.py``; serve's since regenerated when it took every
tensorflow_model_server flag): flag names, defaults in texts and help texts
change only on purpose. And the flags' defaults are the configs' own."""

import contextlib
import io
import os

import pytest

from monolith_tf import cli
from monolith_tf.config import CheckpointConfig, ServerConfig, SyncConfig, WorkerConfig
from monolith_tf.streaming.joiner import JoinerConfig

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cli_help")
COMMANDS = ["inspect", "export", "train", "join", "replay", "serve", "sync-agent"]


def _help(argv, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")   # argparse wraps to the terminal's width
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv + ["--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_is_unchanged(command, monkeypatch):
    name = command or "python-m-monolith_tf"
    with open(os.path.join(GOLDEN, f"{name}.txt")) as golden:
        assert _help([command] if command else [], monkeypatch) == golden.read()


def _parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_flag_defaults_are_the_configs():
    train = _parse("train", "--job", "j.py", "--data", "d", "--model-dir", "m")
    assert train.sparse_every_secs == CheckpointConfig.sparse_every_secs
    assert train.dense_every_secs == CheckpointConfig.dense_every_secs
    assert train.full_every == CheckpointConfig.full_every
    assert train.max_save_failures == CheckpointConfig.max_save_failures
    assert train.log_every_steps == WorkerConfig.log_every_steps
    assert train.sync_topic == SyncConfig.topic
    assert train.sparse_sync_every_secs == SyncConfig.sparse_every_secs
    assert train.dense_sync_every_secs == SyncConfig.dense_every_secs
    serve = _parse("serve", "--model_base_path", "b")
    assert (serve.port, serve.rest_api_port, serve.max_batch_size, serve.host) == (
        ServerConfig.port, ServerConfig.rest_api_port, ServerConfig.max_batch_size,
        ServerConfig.host)
    assert serve.file_system_poll_wait_seconds == ServerConfig.poll_seconds
    join = _parse("join", "--log", "l", "--state-dir", "s", "--actions", "click")
    defaults = JoinerConfig(["click"])
    assert (join.window, join.allowed_lateness, join.max_pending, join.dedupe_horizon,
            join.partition_idle_timeout) == (defaults.window, defaults.allowed_lateness,
                                             defaults.max_pending, defaults.dedupe_horizon,
                                             defaults.partition_idle_timeout)


def test_a_config_rejects_unknown_options_and_bad_values():
    from monolith_tf.config import with_options

    with pytest.raises(TypeError, match="no option"):
        with_options(None, ServerConfig, {"prot": 1})
    with pytest.raises(ValueError, match="resume"):
        CheckpointConfig(resume="newest")
    with pytest.raises(ValueError, match="steps_in_flight"):
        WorkerConfig(steps_in_flight=0)
    assert with_options(None, ServerConfig, {"port": 0}).port == 0
