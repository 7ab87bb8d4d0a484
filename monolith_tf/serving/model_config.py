"""Which models a server serves: TF Serving's ``ModelServerConfig``.

``--model_config_file`` holds a ``tensorflow.serving.ModelServerConfig`` in
protobuf text format, parsed with the message of ``tensorflow-serving-api``:

    model_config_list {
      config { name: "ctr" base_path: "/models/ctr" model_platform: "tensorflow"
               model_version_policy { specific { versions: 1 versions: 2 } }
               version_labels { key: "stable" value: 1 } }
      config { name: "cvr" base_path: "/models/cvr" }
    }

Each ``config`` becomes a ``ModelEntry``: the name, the base path (a
relative one is taken from the working directory, as TF Serving does), the
version policy
(``latest`` N, by default 1; ``all``; ``specific`` versions) and the version
labels. ``--model_name``/``--model_base_path`` make the one-entry config
(``single_model``).
"""

import dataclasses
from typing import Dict, Tuple

import grpc
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

MESSAGE = "tensorflow.serving.ModelServerConfig"


class ModelConfigError(ValueError):
    """A model config that cannot be served (unparsable, meaningless, or
    naming versions that are not there); ``code``: the gRPC status a reload
    answers with."""

    def __init__(self, message, code=grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a base path serve: ``kind`` "latest" (the
    ``num_versions`` newest), "all", or "specific" (``versions``)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: Tuple[int, ...] = ()

    def choose(self, available):
        """The versions to serve of ``available`` (ascending ints)."""
        if self.kind == "all":
            return list(available)
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return list(available)[-self.num_versions:]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One served model: ``name``, ``base_path``, ``policy`` (a
    VersionPolicy) and ``labels`` ({label: version})."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: Dict[str, int] = dataclasses.field(default_factory=dict)


def single_model(name, base_path):
    """The config of ``--model_name NAME --model_base_path BASE``."""
    return [ModelEntry(name, base_path)]


def parse_model_config(text):
    """The ``ModelEntry`` list of a ModelServerConfig in text format. Raises
    ModelConfigError naming what is wrong (the parse error begins "Error
    parsing text-format tensorflow.serving.ModelServerConfig", TF Serving's
    words)."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ModelConfigError(f"Error parsing text-format {MESSAGE}: {error}") from None
    return entries_of(config)


def read_model_config(path):
    """``parse_model_config`` of the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except OSError as error:
        raise ModelConfigError(f"cannot read --model_config_file {path}: {error}") from None
    return parse_model_config(text)


def entries_of(config):
    """The ``ModelEntry`` list of a ``ModelServerConfig`` message."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ModelConfigError("custom_model_config is not supported: use model_config_list")
    entries, names = [], set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ModelConfigError("every model config needs a name")
        if model.name in names:
            raise ModelConfigError(f"model {model.name!r} is configured twice")
        if not model.base_path:
            raise ModelConfigError(f"model {model.name!r} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ModelConfigError(f"model {model.name!r}: model_platform "
                                   f"{model.model_platform!r} is not served here (only "
                                   "\"tensorflow\" SavedModels)")
        names.add(model.name)
        entries.append(ModelEntry(model.name, model.base_path,
                                  _policy(model), dict(model.version_labels)))
    return entries


def _policy(model):
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice") or "latest"
    if kind == "specific":
        if not policy.specific.versions:
            raise ModelConfigError(f"model {model.name!r}: a specific version policy needs "
                                   "at least one version")
        return VersionPolicy("specific", versions=tuple(sorted(policy.specific.versions)))
    if kind == "all":
        return VersionPolicy("all")
    count = policy.latest.num_versions or 1
    if count < 0:
        raise ModelConfigError(f"model {model.name!r}: latest num_versions must be >= 1")
    return VersionPolicy("latest", num_versions=count)
