"""What waits on the Redis broker, read the way a worker takes it: kombu keeps one list per
priority level (``store.queue.fair_priority``), lower levels first, oldest first within one."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from kombu.transport.redis import Channel

from store.queue import PRIORITY_LEVELS


def queued(url: str, queue: str) -> list[tuple[str, list[Any], int]]:
    """``(task name, args, priority)`` of each message waiting in ``queue``, in the order a
    worker takes them."""
    client = redis.Redis.from_url(url)
    messages = []
    for level in range(PRIORITY_LEVELS):
        key = queue if level == 0 else f"{queue}{Channel.sep}{level}"
        for raw in reversed(client.lrange(key, 0, -1)):  # LPUSHed: the oldest is last
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            messages.append((message["headers"]["task"], args, level))
    return messages
