"""Traffic replay: MovieLens ratings, in timestamp order, as the impressions
and actions a live recommender would log, for demos and experiments.

Each rating (user, movie, stars, time t) becomes
  - an impression of the rated movie at t (feature log), request id
    ``"<user>-<movie>-<t>"``;
  - up to ``negatives`` impressions at t of distinct movies the user has
    not rated yet (drawn uniformly from the movies seen so far, a few tries
    each), which get no action;
  - actions at t + a delay drawn from [0, ``max_action_delay``] seconds:
    ``rating`` (value: the stars) and, for 4 stars or more, ``like`` (1.0).
Records are produced in event-time order of the impressions, with each
action right after its impression (the joiner copes with any order).
``speedup`` paces the replay against the wall clock (60: one hour of
ratings per minute; 0: as fast as possible).
"""

import time

import numpy as np

from monolith_tf.datasets import movielens
from monolith_tf.streaming.records import (ActionRecord, FeatureRecord, encode_action,
                                           encode_feature)
from monolith_tf.topics import ACTIONS_TOPIC, FEATURES_TOPIC


def load_sorted_ratings(path, max_ratings=None):
    """(users, movies, stars, times) numpy arrays of a MovieLens file, sorted
    by time (stable: file order among equal times)."""
    arrays = movielens.read_ratings(path)
    order = np.argsort(arrays["timestamp"], kind="stable")[:max_ratings]
    return (arrays["user_id"][order], arrays["movie_id"][order], arrays["rating"][order],
            arrays["timestamp"][order])


def replay(path, log, speedup=0.0, negatives=2, max_action_delay=60, max_ratings=None,
           feature_topic=FEATURES_TOPIC, action_topic=ACTIONS_TOPIC, seed=0):
    """Replays the ratings of ``path`` into ``log``; returns counts of
    ratings, impressions and actions produced."""
    if speedup < 0 or negatives < 0 or max_action_delay < 0:
        raise ValueError("speedup, negatives and max_action_delay must be >= 0")
    users, movies, stars, times = load_sorted_ratings(path, max_ratings)
    rng = np.random.default_rng(seed)
    producer = log.producer()
    rated = {}             # user -> set of rated movies
    seen_movies = []       # movies in order of first rating (negatives come from these)
    seen_set = set()
    counts = {"ratings": 0, "impressions": 0, "actions": 0}
    wall_start = time.monotonic()
    for user, movie, rating, t in zip(users.tolist(), movies.tolist(), stars.tolist(),
                                      times.tolist()):
        if speedup > 0:
            delay = (t - times[0]) / speedup - (time.monotonic() - wall_start)
            if delay > 0:
                time.sleep(delay)
        if movie not in seen_set:
            seen_set.add(movie)
            seen_movies.append(movie)
        mine = rated.setdefault(user, set())
        mine.add(movie)
        request_id = f"{user}-{movie}-{t}".encode()
        producer.produce(feature_topic, encode_feature(FeatureRecord(request_id, user, movie, t)),
                         key=request_id, timestamp_ms=t * 1000)
        counts["impressions"] += 1
        action_time = t + int(rng.integers(0, max_action_delay + 1))
        producer.produce(action_topic, encode_action(ActionRecord(request_id, "rating", rating,
                                                                  action_time)),
                         key=request_id, timestamp_ms=action_time * 1000)
        counts["actions"] += 1
        if rating >= 4:
            producer.produce(action_topic, encode_action(ActionRecord(request_id, "like", 1.0,
                                                                      action_time)),
                             key=request_id, timestamp_ms=action_time * 1000)
            counts["actions"] += 1
        shown = set()
        for _ in range(3 * negatives):  # a few tries: drawn movies may be rated or repeated
            if len(shown) == negatives:
                break
            other = seen_movies[int(rng.integers(0, len(seen_movies)))]
            if other in mine or other in shown:
                continue
            shown.add(other)
            negative_id = f"{user}-{other}-{t}-n".encode()
            producer.produce(feature_topic,
                             encode_feature(FeatureRecord(negative_id, user, other, t)),
                             key=negative_id, timestamp_ms=t * 1000)
            counts["impressions"] += 1
        counts["ratings"] += 1
    producer.flush()
    return counts
