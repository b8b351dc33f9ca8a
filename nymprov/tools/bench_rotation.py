"""
How long a node's replay state takes to open at restart, after 1, 10 and
30 epochs of traffic behind it: with a replay file per key, only the live
keys' files are read, so the figure does not grow with the epochs.

    python -m nymprov.tools.bench_rotation [TAGS_PER_EPOCH]
"""

import os
import sys
import tempfile
import time

from twisted.internet import defer, task

from nymprov.storage.keyed import drop_other_keys, sqlite_per_key

#: Keys alive at once in this benchmark: the current one and the previous.
LIVE_KEYS = 2


async def _epochs_then_restart(reactor, epochs, tags_per_epoch, out):
    directory = tempfile.mkdtemp(prefix="nym-bench-rotation-")
    cache = sqlite_per_key(reactor, directory)
    live = []
    for epoch in range(epochs):
        key_id = os.urandom(32)
        await cache.open_key(key_id)
        await defer.gatherResults([cache.check_and_record(key_id, os.urandom(16)) for _ in range(tags_per_epoch)])
        live.append(key_id)
        if len(live) > LIVE_KEYS:
            await cache.retire_key(live.pop(0))
    await cache.close()
    started = time.perf_counter()
    again = sqlite_per_key(reactor, directory)
    drop_other_keys(directory, live)
    for key_id in live:
        await again.open_key(key_id)
    took = time.perf_counter() - started
    files = [name for name in os.listdir(directory) if name.endswith(".sqlite")]
    print(f"{epochs:3d} epochs x {tags_per_epoch} tags behind: {len(files)} replay files,"
          f" restart opened {len(live)} keys in {took * 1000:.0f} ms", file=out)
    await again.close()


def main(argv=None, out=None):
    argv = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    tags = int(argv[0]) if argv else 20_000

    async def run(reactor):
        for epochs in (1, 10, 30):
            await _epochs_then_restart(reactor, epochs, tags, out)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
