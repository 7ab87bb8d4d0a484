"""Model configs (TF Serving's ModelServerConfig text format), version
policies and version directories, and a ModelManager following policy and
label changes: in process, no sockets."""

import grpc
import pytest
from tensorflow_serving.config import model_server_config_pb2

import tf_serving_models as models
from monolith_tf.export_format import list_versions, version_directories, version_path
from monolith_tf.serving.errors import ServingError
from monolith_tf.serving.metrics import ServingMetrics
from monolith_tf.serving.model_config import (ModelConfigError, ModelEntry, VersionPolicy,
                                              entries_of, parse_model_config, read_model_config)
from monolith_tf.serving.model_manager import ModelManager

GOOD = """
model_config_list {
  config { name: "ctr" base_path: "/m/ctr" model_platform: "tensorflow"
           model_version_policy { specific { versions: 7 versions: 3 } }
           version_labels { key: "stable" value: 3 } version_labels { key: "canary" value: 7 } }
  config { name: "cvr" base_path: "/m/cvr" model_version_policy { all {} } }
  config { name: "rank" base_path: "rel/rank"
           model_version_policy { latest { num_versions: 2 } } }
  config { name: "plain" base_path: "/m/plain" }
}
"""


def test_a_config_file_becomes_entries():
    ctr, cvr, rank, plain = parse_model_config(GOOD)
    assert ctr == ModelEntry("ctr", "/m/ctr", VersionPolicy("specific", versions=(3, 7)),
                             {"stable": 3, "canary": 7})
    assert cvr.policy == VersionPolicy("all") and cvr.labels == {}
    assert (rank.base_path, rank.policy) == ("rel/rank", VersionPolicy("latest", 2))
    assert plain.policy == VersionPolicy("latest", 1)


@pytest.mark.parametrize("policy,chosen", [
    (VersionPolicy("latest", 1), [9]), (VersionPolicy("latest", 2), [5, 9]),
    (VersionPolicy("all"), [1, 5, 9]), (VersionPolicy("specific", versions=(1, 4)), [1]),
])
def test_version_policies_choose(policy, chosen):
    assert policy.choose([1, 5, 9]) == chosen


@pytest.mark.parametrize("text,message", [
    ("improperly formatted file", "Error parsing text-format "
                                  "tensorflow.serving.ModelServerConfig"),
    ('model_config_list { config { name: "a" base_path: "/x" } '
     'config { name: "a" base_path: "/y" } }', "configured twice"),
    ('model_config_list { config { name: "a" } }', "has no base_path"),
    ('model_config_list { config { base_path: "/x" } }', "needs a name"),
    ('model_config_list { config { name: "a" base_path: "/x" model_platform: "tflite" } }',
     "model_platform 'tflite' is not served here"),
    ('model_config_list { config { name: "a" base_path: "/x" '
     'model_version_policy { specific {} } } }', "at least one version"),
])
def test_bad_configs_are_refused_with_the_reason(text, message):
    with pytest.raises(ModelConfigError) as error:
        parse_model_config(text)
    assert message in str(error.value)


def test_custom_model_config_and_unreadable_files_are_refused(tmp_path):
    config = model_server_config_pb2.ModelServerConfig()
    config.custom_model_config.Pack(model_server_config_pb2.ModelConfigList())
    with pytest.raises(ModelConfigError, match="custom_model_config is not supported"):
        entries_of(config)
    with pytest.raises(ModelConfigError, match="cannot read --model_config_file"):
        read_model_config(str(tmp_path / "missing.config"))


def test_version_directories_keep_their_own_names(tmp_path):
    for name in ("00000123", "7", "0007", "abc", "12x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "55").mkdir()  # no saved_model.pb: not a version yet
    assert version_directories(str(tmp_path)) == {123: "00000123", 7: "7"}
    assert list_versions(str(tmp_path)) == [7, 123]
    assert version_path(str(tmp_path), 123) == str(tmp_path / "00000123")
    assert version_path(str(tmp_path), 9) == str(tmp_path / "9")  # where a new one goes
    assert version_directories(str(tmp_path / "none")) == {}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("two") / "half_plus_two")
    models.half_plus_two_tf1(base, version=123)
    return models.half_plus_two_tf1(base, version=124)


def test_a_manager_follows_policy_and_label_changes(two_versions):
    entry = ModelEntry("m", two_versions, VersionPolicy("specific", versions=(123,)),
                       {"stable": 123})
    manager = ModelManager(entry, ServingMetrics(), poll_seconds=0)
    newest = []
    manager.add_load_listener(lambda servable: newest.append(servable.version))
    manager.start()
    try:
        assert manager.serving_versions == [123] and newest == [123]
        assert manager.servable(label="stable").version == 123
        with pytest.raises(ServingError) as error:
            manager.servable(124)
        assert error.value.code == grpc.StatusCode.NOT_FOUND
        manager.reconfigure(ModelEntry("m", two_versions, VersionPolicy("all"),
                                       {"stable": 123, "canary": 124}))
        assert manager.serving_versions == [123, 124] and newest == [123, 124]
        assert manager.servable().version == 124
        assert manager.servable(label="canary").version == 124
        manager.reconfigure(ModelEntry("m", two_versions,
                                       VersionPolicy("specific", versions=(123,))))
        # The newest left: updates and the sync stream go to 123 again.
        assert manager.serving_versions == [123] and newest == [123, 124, 123]
        assert [(s.version, s.state) for s in manager.statuses()] == [(124, "END"),
                                                                      (123, "AVAILABLE")]
        with pytest.raises(ServingError) as error:
            manager.servable(label="canary")
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        manager.stop()
    assert manager.serving_versions == []
