"""When a periodic action of the training loop is due: checkpoints, sync
pushes, base versions, relays.

Three clocks, each optional (ONLINE_LOOP's naming): global steps
(``every_steps``), wall seconds (``every_secs``: real processes) and
seconds of data time (``every_data_secs``: the event times the tables saw,
so a replay faster than real time schedules by the data). The action is due
when any clock that is on has run its interval since the last ``done``.
"""

import time


class Schedule:
    """Due every ``every_steps`` steps, every ``every_secs`` wall seconds or
    every ``every_data_secs`` seconds of data time, whichever comes first;
    None turns a clock off, and with all three off it is never due
    (``active`` is False). The data clock starts at the first ``done`` that
    gives a data time."""

    def __init__(self, every_steps=None, every_secs=None, every_data_secs=None):
        for name, value in (("every_steps", every_steps), ("every_secs", every_secs),
                            ("every_data_secs", every_data_secs)):
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ValueError(f"{name} must be > 0 or None (off), got {value!r}")
        self.every_steps, self.every_secs = every_steps, every_secs
        self.every_data_secs = every_data_secs
        self._step, self._wall, self._data = 0, time.monotonic(), None

    @property
    def active(self):
        """Whether any clock is on."""
        return any(value is not None for value in
                   (self.every_steps, self.every_secs, self.every_data_secs))

    def due(self, step, data_time=None):
        """Whether the action is due at global step ``step`` and data time
        ``data_time`` (seconds; None: the data clock is not consulted)."""
        if self.every_steps is not None and step - self._step >= self.every_steps:
            return True
        if self.every_secs is not None and time.monotonic() - self._wall >= self.every_secs:
            return True
        return (self.every_data_secs is not None and self._data is not None and
                data_time is not None and data_time - self._data >= self.every_data_secs)

    def done(self, step, data_time=None):
        """Records that the action ran at ``step`` (and ``data_time``)."""
        self._step, self._wall = step, time.monotonic()
        if data_time is not None:
            self._data = data_time
