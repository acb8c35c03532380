"""What waits on the broker, counted without taking anything: for ``GET /metrics``.

On Redis, kombu keeps one list per queue and priority level (the level-0 list is named as the
queue, level ``n`` is ``<queue>\\x06\\x16<n>``: ``store.queue.fair_priority``), and a hash of
the messages workers have taken but not acknowledged yet (``acks_late``: a running job's
message stays there until it ends). One pipelined round trip reads every length.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis
from celery import Celery
from kombu.transport.redis import Channel

from store.queue import PRIORITY_LEVELS


@dataclass(frozen=True)
class Backlog:
    waiting: dict[tuple[str, int], int]  # (queue, priority level) -> messages waiting
    unacked: int  # taken by a worker, not yet acknowledged (all queues)


def service_queues(celery: Celery) -> list[str]:
    """The queues the service sends tasks to: the default one and every routed one."""
    conf = celery.conf
    routed = {route["queue"] for route in (conf.task_routes or {}).values()}
    return sorted({conf.task_default_queue, *routed})


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def redis_client(url: str, *, timeout_s: float) -> redis.Redis:
    """A client whose connects and reads give up after ``timeout_s``, so a scrape never
    waits long on a broker that is down."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def read_backlog(client: redis.Redis, queues: Iterable[str]) -> Backlog:
    """The length of every priority list of ``queues`` and of the unacked hash.

    Raises:
        redis.RedisError: the broker did not answer.
    """
    keys = [(q, level) for q in queues for level in range(PRIORITY_LEVELS)]
    with client.pipeline(transaction=False) as pipe:
        for queue, level in keys:
            pipe.llen(queue if level == 0 else f"{queue}{Channel.sep}{level}")
        pipe.hlen(Channel.unacked_key)
        *lengths, unacked = pipe.execute()
    return Backlog(waiting=dict(zip(keys, map(int, lengths), strict=True)), unacked=int(unacked))
