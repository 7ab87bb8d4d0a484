"""What a fresh replica serves once it has followed a run's sync stream."""

from monolith_tf.streaming import open_log
from monolith_tf.sync.replica import Replica


def served_rows(model_base_path, log_dir, timeout=60):
    """Starts a loopback replica on ``model_base_path`` following the sync
    stream of the embedded log ``log_dir``, waits until it serves a version
    and has applied the whole stream, and returns ``{table name: (ids,
    values)}`` of every table it serves (sorted by id)."""
    replica = Replica(model_base_path, open_log({"path": log_dir}), port=0,
                      rest_api_port=None, poll_seconds=0.05).start()
    try:
        replica.wait_for_version(timeout=timeout)
        replica.catch_up(timeout=timeout)
        servable = replica.server.servable(replica.model_name)
        return {table["name"]: servable.table_rows(table["name"])
                for table in servable.facts["tables"]}
    finally:
        replica.stop()
