"""What one Redis command costs livetx's process: txredisapi against redis-py's asyncio client.

Each client publishes a chat event 20,000 times to a local ``redis-server``
(pipelined: all sent, then all answers awaited), and 2,000 times one after
another; CPU time of this process per command is printed, and what
importing each client adds to a process that already runs Twisted.

    python benchmarks/redis_clients.py --port 6379
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

EVENT = '{"t":"bot_delta_chunk","data":{"text":"hello "}}'


def txredisapi_run(port: int, n: int) -> None:
    from twisted.internet import defer, reactor
    import txredisapi

    @defer.inlineCallbacks
    def main() -> object:
        c = yield txredisapi.Connection("127.0.0.1", port, convertNumbers=False)
        start = time.process_time()
        yield defer.gatherResults([c.execute_command("PUBLISH", "ch", EVENT) for _ in range(n)])
        pipelined = (time.process_time() - start) / n
        start = time.process_time()
        for _ in range(n // 10):
            yield c.execute_command("PUBLISH", "ch", EVENT)
        one_by_one = (time.process_time() - start) / (n // 10)
        print(f"txredisapi: {pipelined * 1e6:.1f} us pipelined, {one_by_one * 1e6:.1f} us one by one")
        yield c.disconnect()
        reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()


def redis_py_run(port: int, n: int) -> None:
    import redis.asyncio as aioredis

    async def main() -> None:
        c = aioredis.Redis(host="127.0.0.1", port=port, single_connection_client=True)
        start = time.process_time()
        async with c.pipeline(transaction=False) as p:
            for _ in range(n):
                p.publish("ch", EVENT)
            await p.execute()
        pipelined = (time.process_time() - start) / n
        start = time.process_time()
        for _ in range(n // 10):
            await c.publish("ch", EVENT)
        one_by_one = (time.process_time() - start) / (n // 10)
        print(f"redis-py asyncio: {pipelined * 1e6:.1f} us pipelined, {one_by_one * 1e6:.1f} us one by one")
        await c.aclose()

    asyncio.run(main())


IMPORT_COST = """
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 1e6
from twisted.internet import reactor, defer, protocol
import twisted.web.server
before = rss(); import {module}; print(f'import {module}: +{{rss() - before:.2f}} MB')
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=6379, help="a running redis-server on 127.0.0.1")
    parser.add_argument("--commands", type=int, default=20_000)
    args = parser.parse_args()
    for run in (txredisapi_run, redis_py_run):  # each in a process of its own (one reactor per process)
        code = f"import sys; sys.path.insert(0, {sys.path[0]!r}); import redis_clients as r; r.{run.__name__}({args.port}, {args.commands})"
        subprocess.run([sys.executable, "-c", code], check=True)
    for module in ("txredisapi", "redis.asyncio"):
        subprocess.run([sys.executable, "-c", IMPORT_COST.format(module=module)], check=True)


if __name__ == "__main__":
    main()
