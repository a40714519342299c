"""Run an iterator in a background thread, a few items ahead of its consumer.

The featurizer iterates over the clips of a video (PyAV decoding) while it encodes the clips already decoded (a torch
forward). Both release the GIL in their heavy parts (PyAV around `avcodec_send_packet` / `avcodec_receive_frame` and
the RGB conversion, torch in its kernels), so a decoding thread overlaps the encoder instead of waiting for it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")

_POLL_SECONDS = 0.1  # how often a blocked producer checks whether the consumer has gone


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def prefetched(items: Iterable[Item], depth: int) -> Iterator[Item]:
    """The items of `items`, produced in a daemon thread at most `depth` ahead. An exception of the producer is
    raised in the consumer, at the item where it happened; a consumer that stops early (break, exception) stops the
    producer and closes its iterator (and so the video file) in the producer's thread."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def put(value) -> bool:
        while not stopped.is_set():
            try:
                buffer.put(value, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            put(_Failure(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="lddetr-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            value = buffer.get()
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
    finally:
        stopped.set()
        producer.join()
