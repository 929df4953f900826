"""Latency, concurrency, memory and start-up of a Live API server, from outside.

Starts the OpenAI-compatible simulator and ``twistd live`` as separate
processes (or takes any server's URL), then runs the scenarios of
:mod:`live_scenarios` with the ``websockets`` client of :mod:`live_client`.
Server CPU and RSS come from /proc, so the figures hold on a busy machine.
Every turn run first measures the floor (:mod:`floor_server`) and gives each
figure as a ratio to it, so targets hold on any machine; every summary
records the machine's speed as the time of a fixed Python loop.

    python benchmarks/live_bench.py all --out bench-results      # the whole set
    python benchmarks/live_bench.py turns --connections 20 --turns 5
    python benchmarks/live_bench.py audio --turns 20
    python benchmarks/live_bench.py interrupt --trials 50
    python benchmarks/live_bench.py idle --levels 0,1,100,1000,10000
    python benchmarks/live_bench.py startup
    python benchmarks/live_bench.py all --check                  # exit 1 when a target is missed
    python benchmarks/live_bench.py turns --no-floor             # livetx alone, no ratios
    python benchmarks/live_bench.py turns --url 'ws://host:6185/api/live_chat/ws?token=JWT'

Needs ``pip install websockets`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return time.monotonic() - start
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _lift_nofile() -> None:
    """In the server's child process: allow as many sockets as the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: The cores this harness may use, read before it pins itself anywhere.
_CORES = sorted(os.sched_getaffinity(0))


def split_cores() -> tuple[set[int], set[int]]:
    """(the server's cores, the load generator's cores): the first core apart from the rest."""
    cores = _CORES
    if len(cores) < 2:
        raise RuntimeError("--pin needs at least two cores")
    return {cores[0]}, set(cores[1:])


def _pinned(cores: set[int] | None, then: Any = None) -> Any:
    """A preexec_fn that pins the child to ``cores`` (None: anywhere), then runs ``then``."""
    def setup() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)
        if then is not None:
            then()
    return setup


FLOOR_SERVER = Path(__file__).with_name("floor_server.py")


@contextmanager
def local_server(
    tokens: int = 40, sentences: int = 5, delay: float = 0.0, offline: bool = False,
    *, backlog: int = 1024, pin: bool = False, floor: bool = False, config_extra: str = "", workers: int = 1,
    server_extra: str = "",
    reactor: str | None = None,
) -> Iterator[tuple[str, int, float]]:
    """Simulator + livetx in their own processes; yields (url, server pid, start-up seconds).

    The simulator serves chat, speech and transcription. ``offline`` runs
    livetx on its defaults instead: echo model, eSpeak NG, PocketSphinx.
    ``floor`` runs :mod:`floor_server` in livetx's place: the same wire work
    on bare Twisted and Autobahn, the baseline every livetx figure is divided by.
    ``backlog`` lets thousands of sockets connect without dropped SYNs.
    ``config_extra`` is appended to the config file (``server_extra`` to its
    ``[server]`` table); ``workers`` > 1 runs
    ``--workers`` (the floor: that many processes on ``SO_REUSEPORT`` sockets) (the pid yielded is then the supervisor's); ``reactor`` is twistd's ``-r`` (e.g. ``asyncio``).
    ``pin`` gives the server the first core and the simulator the others, so the
    load generator does not take the server's CPU (pin the client with
    :func:`split_cores` too).
    """
    server_cores, load_cores = split_cores() if pin else (None, None)
    sim_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "livetx.toml")
        base = f"http://127.0.0.1:{sim_port}/v1"
        # Every benchmark socket is one user's: the per-user connection cap
        # (a defence against one account hogging the server) is lifted.
        config.write_text(
            "[server]\nmax_connections_per_user = 0\n" + server_extra + ("" if offline else
            f'[llm]\nprovider = "openai"\nbase_url = "{base}"\nmodel = "sim"\n'
            f'[tts]\nprovider = "openai"\nbase_url = "{base}"\n'
            f'[stt]\nprovider = "openai"\nbase_url = "{base}"\n') + config_extra
        )
        sim = subprocess.Popen(
            [sys.executable, "-m", "livetx.testing.openai_server", "--port", str(sim_port),
             "--tokens", str(tokens), "--sentences", str(sentences), "--delay", str(delay)],
            stdout=subprocess.DEVNULL,
            preexec_fn=_pinned(load_cores),
        )
        data = Path(tmp, "data")
        if floor:
            command = [sys.executable, str(FLOOR_SERVER), "--port", str(port), "--upstream", base,
                       "--backlog", str(backlog), "--workers", str(workers)]
        else:
            command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                       "--logfile", str(Path(tmp, "twistd.log")), *(["-r", reactor] if reactor else []), "live",
                       "--listen", f"tcp:{port}:interface=127.0.0.1:backlog={backlog}",
                       "--data-dir", str(data), "--config", str(config), "--workers", str(workers)]
        server = None
        try:
            wait_for_port(sim_port)  # first, so it does not compete with the server's start-up
            started = time.monotonic()
            server = subprocess.Popen(command, preexec_fn=_pinned(server_cores, _lift_nofile))
            wait_for_port(port)
            startup = time.monotonic() - started
            if floor:
                yield f"ws://127.0.0.1:{port}/", server.pid, startup
                return
            from livetx.auth.tokens import issue_token, load_or_create_secret

            token = issue_token(load_or_create_secret(data, None), "bench", 3600)
            yield f"ws://127.0.0.1:{port}/api/live_chat/ws?token={token}", server.pid, startup
        finally:
            for process in (server, sim):
                if process is None:
                    continue
                process.terminate()
                process.wait(timeout=30)


@contextmanager
def default_server(config_text: str = "") -> Iterator[tuple[int, Path, str]]:
    """``twistd live`` on its defaults (echo model, eSpeak NG) in its own process, ``config_text`` its
    config file; yields its port, its data directory and the Live API URL of a user "bystander"."""
    with tempfile.TemporaryDirectory() as tmp:
        port, data, config = free_port(), Path(tmp, "data"), Path(tmp, "livetx.toml")
        config.write_text(config_text)
        server = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                                   "--pidfile=", "--logfile", str(Path(tmp, "twistd.log")), "live",
                                   "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data),
                                   "--config", str(config)])
        try:
            wait_for_port(port)
            from livetx.auth.tokens import issue_token, load_or_create_secret

            token = issue_token(load_or_create_secret(data, None), "bystander", 3600)
            yield port, data, f"ws://127.0.0.1:{port}/api/live_chat/ws?token={token}"
        finally:
            server.terminate()
            server.wait()


SCENARIOS = ("turns", "audio", "interrupt", "idle", "startup", "all")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", default="turns", choices=SCENARIOS)
    parser.add_argument("--url", help="an existing Live API socket URL (skip starting livetx)")
    parser.add_argument("--server-pid", type=int, help="with --url: a local server's pid, for CPU and RSS")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--turns", type=int, default=20, help="turns per connection")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the N x M run (more samples)")
    parser.add_argument("--audio-seconds", type=float, default=1.0, help="speech per voice turn")
    parser.add_argument("--no-pace", action="store_true", help="send 20 ms frames at once, not in real time")
    parser.add_argument("--trials", type=int, default=50, help="interrupts")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds to watch for frames after stop_play")
    parser.add_argument("--interrupt-delay", type=float, default=0.01,
                        help="simulator seconds per token for the interrupt scenario (a turn must run)")
    parser.add_argument("--levels", default="0,1,100,1000,10000", help="idle connection counts")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds each idle level is held")
    parser.add_argument("--concurrency", type=int, default=64, help="idle sockets opening at once")
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--sentences", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.0, help="simulator seconds between tokens")
    parser.add_argument("--offline", action="store_true", help="livetx on its defaults: echo model, eSpeak NG")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=len(_CORES) > 1,
                        help="livetx on the first core, simulator and client on the others, as when the "
                             "model and the clients are other machines (the default with two cores or more); "
                             "--no-pin lets all three share every core")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the floor (bare Twisted + Autobahn doing the same wire work) before each "
                             "turn run and give every figure as a ratio to it; --no-floor skips it, and with it "
                             "the ratio targets")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target measured in this run is missed")
    parser.add_argument("--json", help="write the summaries to this file")
    parser.add_argument("--out", help="write one JSON file per scenario into this directory")
    return parser.parse_args()


@contextmanager
def _target(args: argparse.Namespace, delay: float, floor: bool = False) -> Iterator[Any]:
    from live_scenarios import Server

    if args.url and not floor:
        yield Server(args.url, args.server_pid)
    else:
        with local_server(args.tokens, args.sentences, delay, args.offline, pin=args.pin, floor=floor) as (
                url, pid, _):
            yield Server(url, pid)


#: A turn run: (kind, connections, turns per connection, rounds).
Shape = tuple[str, int, int, int]
#: The fixed suite of benchmarks/RESULTS.md. Rounds alternate between the floor and
#: livetx, so the one-connection runs are split into rounds as well.
SUITE: tuple[Shape, ...] = (("text", 1, 10, 5), ("text", 20, 5, 3), ("audio", 1, 5, 4), ("audio", 20, 5, 2))


def turn_runs(args: argparse.Namespace, shapes: tuple[Shape, ...]) -> list[dict[str, Any]]:
    """Each shape on the floor server and on the server under test, round by round in turn, compared.

    Both servers run side by side (on the same core when pinned; only one is
    busy at a time), with the same client, simulator program and shapes.
    """
    import asyncio

    import live_scenarios as sc

    pace = not args.no_pace
    summaries = []
    with ExitStack() as servers:
        floor = servers.enter_context(_target(args, args.delay, floor=True)) if args.floor else None
        server = servers.enter_context(_target(args, args.delay))
        for kind, connections, turns, rounds in shapes:
            if floor is None:
                summary = asyncio.run(sc.turns(server, connections, turns, kind, rounds, args.audio_seconds, pace))
            else:
                _, summary = asyncio.run(sc.paired_turns(floor, server, connections, turns, kind, rounds,
                                                         args.audio_seconds, pace))
            summaries.append(sc.show(summary))
    return summaries


def main() -> None:
    import asyncio

    args = _arguments()
    import live_client
    import live_scenarios as sc
    import live_targets as targets

    live_client.raise_nofile_limit()
    calibration = targets.calibrate()  # before any server starts: this process alone
    print(f"calibration: fixed Python loop {calibration['loop_ms']:.1f} ms (fastest of {calibration['runs']}; "
          f"median {calibration['loop_median_ms']:.1f} ms)")
    if args.pin:
        server_cores, load_cores = split_cores()
        os.sched_setaffinity(0, load_cores)
        if args.url:  # someone else's server: only this client keeps off the first core
            print(f"client on cores {sorted(load_cores)} (--no-pin: any)")
        else:
            print(f"the server on core {sorted(server_cores)}, simulator and client on {sorted(load_cores)} "
                  "(--no-pin: shared)")
    levels = [int(n) for n in args.levels.split(",")]
    wanted = {args.scenario} if args.scenario != "all" else set(SCENARIOS)
    summaries: list[dict[str, Any]] = []
    if "startup" in wanted and not args.url:
        summaries.append(sc.show(sc.startup(args.startup_runs, tokens=args.tokens, sentences=args.sentences,
                                            offline=args.offline, pin=args.pin)))
    if args.scenario == "all":
        summaries += turn_runs(args, SUITE)
    elif args.scenario in ("turns", "audio"):
        kind = "audio" if args.scenario == "audio" else "text"
        summaries += turn_runs(args, ((kind, args.connections, args.turns, args.rounds),))
    if "idle" in wanted:
        # A fresh server: every socket of a user loads that user's stored
        # history, so idle sockets after many turns cost more than on a new one.
        with _target(args, args.delay) as server:
            summaries.append(sc.run(sc.idle(server, levels, args.hold, args.concurrency)))
    if "interrupt" in wanted:
        with ExitStack() as servers:
            floor = servers.enter_context(_target(args, args.interrupt_delay, floor=True)) if args.floor else None
            server = servers.enter_context(_target(args, args.interrupt_delay))
            base = asyncio.run(sc.interrupts(floor, args.trials, args.settle)) if floor is not None else None
            summary = asyncio.run(sc.interrupts(server, args.trials, args.settle))
            if base is not None:
                targets.compare(summary, base, targets.COMPARED_INTERRUPTS)
            summaries.append(sc.show(summary))
    for summary in summaries:
        summary["pinned"] = bool(args.pin)
        summary["calibration"] = calibration
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for n, summary in enumerate(summaries):
            name = f"{n:02d}-{summary['scenario'].replace(' ', '-')}.json"
            Path(args.out, name).write_text(json.dumps(summary, indent=2))
    missed = targets.missed(summaries)
    if missed:
        print(f"\n{len(missed)} target(s) missed: " + "; ".join(row["figure"] for row in missed))
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
