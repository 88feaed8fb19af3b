"""`agentpool-runtime`: run the supervisor (the pod's command), or submit and inspect tasks.

    agentpool-runtime [run]                      start the supervisor from $AGENTPOOL_CONFIG
    agentpool-runtime submit [--handler H] [--payload JSON | --payload-file F] [--count N]
                             [--idempotency-key K] [--wait] [--timeout S]
    agentpool-runtime status TASK_ID...          print each task's result (or "pending")

Settings come only from `config.load_settings()`; `--config` overrides $AGENTPOOL_CONFIG.
Exit codes: 0 ok, 1 a task failed or was cancelled, 2 usage/config error, 3 wait timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from agent_runtime.config import ConfigError, RuntimeSettings, load_settings
from agent_runtime.errors import AgentPoolError, TaskWaitTimeout
from agent_runtime.queue.envelope import TaskResult
from agent_runtime.sdk.client import TaskClient
from agent_runtime.supervisor.supervisor import Supervisor
from agent_runtime.worker.process import configure_logging

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentpool-runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file (default: $AGENTPOOL_CONFIG)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="start the supervisor and its warm workers")
    submit = sub.add_parser("submit", help="queue task(s)")
    submit.add_argument("--handler", default="default")
    submit.add_argument("--payload", default="{}", help="JSON payload")
    submit.add_argument("--payload-file", help="read the JSON payload from a file ('-': stdin)")
    submit.add_argument("--count", type=int, default=1, help="submit the payload N times")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="wait for the result(s)")
    submit.add_argument("--timeout", type=float, default=None)
    status = sub.add_parser("status", help="show tasks' results")
    status.add_argument("task_ids", nargs="+")
    return parser


class ProgressBar:
    """One line on stderr, redrawn in place, when waiting on more than one task."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._last = ""

    def __call__(self, done: int, total: int, results: dict[str, TaskResult]) -> None:
        failed = sum(1 for r in results.values() if r.status != "succeeded")
        filled = self._width * done // max(total, 1)
        line = (f"\r[{'#' * filled}{'.' * (self._width - filled)}] {done}/{total} done, "
                f"{failed} failed")
        if line != self._last:
            self._stream.write(line)
            self._stream.flush()
            self._last = line

    def finish(self) -> None:
        if self._last:
            self._stream.write("\n")


def _print_result(result: TaskResult | None, task_id: str) -> None:
    if result is None:
        print(json.dumps({"task_id": task_id, "status": "pending"}))
    else:
        print(result.to_json())


def _read_payload(args: argparse.Namespace) -> Any:
    if args.payload_file:
        text = sys.stdin.read() if args.payload_file == "-" else open(  # noqa: SIM115
            args.payload_file, encoding="utf-8").read()
    else:
        text = args.payload
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"payload is not JSON: {exc}") from exc


async def _submit(settings: RuntimeSettings, args: argparse.Namespace) -> int:
    payload = _read_payload(args)
    async with await TaskClient.from_settings(settings) as client:
        if args.count > 1:
            ids = await client.submit_many([payload] * args.count, handler=args.handler)
        else:
            ids = [await client.submit(payload, handler=args.handler,
                                       idempotency_key=args.idempotency_key)]
        if not args.wait:
            for task_id in ids:
                print(task_id)
            return EXIT_OK
        bar = ProgressBar(sys.stderr) if len(ids) > 1 else None
        try:
            results = await client.wait_many(ids, args.timeout, on_progress=bar)
        except TaskWaitTimeout as exc:
            if bar:
                bar.finish()
            print(f"timed out: {exc.args[0]}", file=sys.stderr)
            return EXIT_TIMEOUT
        if bar:
            bar.finish()
        for task_id in ids:
            _print_result(results[task_id], task_id)
        failed = any(r.status != "succeeded" for r in results.values())
        return EXIT_TASK_FAILED if failed else EXIT_OK


async def _status(settings: RuntimeSettings, args: argparse.Namespace) -> int:
    async with await TaskClient.from_settings(settings) as client:
        for task_id in args.task_ids:
            _print_result(await client.get(task_id), task_id)
    return EXIT_OK


def _run_supervisor(settings: RuntimeSettings) -> int:
    # Not asyncio.run(): it waits for every task to finish cancelling, and one stuck in a
    # client library's cleanup would keep a pod that has stopped from exiting.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(Supervisor(settings).run())
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"agentpool-runtime: {exc}", file=sys.stderr)
        return EXIT_USAGE
    command = args.command or "run"
    if command == "run":
        configure_logging(settings.config.log_level, "supervisor")
        return _run_supervisor(settings)
    configure_logging("WARNING", "cli")
    try:
        if command == "submit":
            return asyncio.run(_submit(settings, args))
        return asyncio.run(_status(settings, args))
    except (ConfigError, AgentPoolError) as exc:
        print(f"agentpool-runtime: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
