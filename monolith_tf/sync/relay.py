"""``ScheduledRelay``: one training run feeding replicas on several sync
schedules.

Experiments compare sync intervals; training once per interval would add
run-to-run training noise to the comparison. A relay instead forwards the
publisher's topic to a topic of its own on a longer schedule, so a replica
following it sees what a publisher on that schedule would have pushed.
"""

from monolith_tf.schedule import Schedule
from monolith_tf.step_task import StepTask


class ScheduledRelay(StepTask):
    """Step task: every ``every_data_secs`` of data time, brings the sync
    topic up to date (a row and dense push of ``publisher`` at this step)
    and forwards every record since its previous forward from the
    publisher's topic to ``topic``. A replica following ``topic`` thus
    receives, at the same moments, exactly the state a publisher on that
    schedule would push (records hold full row values and are applied in
    order), while one training run feeds the replicas of every interval:
    their comparison is free of run-to-run training noise."""

    def __init__(self, log, publisher, topic, every_data_secs):
        self.log, self.publisher, self.topic = log, publisher, topic
        self.schedule = Schedule(every_data_secs=every_data_secs)
        self.forwards = 0
        self._consumer = self._producer = None
        self._forwarded = 0

    def begin(self, worker):
        if self.topic not in self.log.topics():
            self.log.create_topic(self.topic, 1)
        self._consumer = self.log.consumer(f"relay-{self.topic}", [self.publisher.topic])
        self._producer = self.log.producer()
        self.schedule.done(worker.step, worker.data_time)

    def after_step(self, worker):
        if self.schedule.due(worker.step, worker.data_time):
            self.forward(worker)

    def finish(self, worker):
        self.forward(worker)

    def forward(self, worker):
        self.publisher.push_rows(worker)
        self.publisher.push_dense(worker)
        end = self.log.end_offsets(self.publisher.topic).get(0, 0)
        while self._forwarded < end:
            for record in self._consumer.poll(1000, 0.05):
                self._producer.produce(self.topic, record.value, key=record.key, partition=0)
                self._forwarded = record.offset + 1
        self._producer.flush()
        self.forwards += 1
        self.schedule.done(worker.step, worker.data_time)

    def close(self):
        for client in (self._consumer, self._producer):
            if client is not None:
                client.close()
