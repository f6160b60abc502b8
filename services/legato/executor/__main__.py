"""``python -m legato.executor --queue default --concurrency 4``"""

from __future__ import annotations

import argparse
import sys

from legato.config.settings import SettingsError, load_settings
from legato.runtime.entry import run_service


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The executor's flags: queue, concurrency, and the bounds of an attempt's life."""
    parser = argparse.ArgumentParser(
        prog="legato executor", description="Run step attempts from a Legato work queue."
    )
    parser.add_argument("--queue", default="default", help="work queue to serve (default: %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="attempts run at once (default: %(default)s)"
    )
    parser.add_argument("--nats-url", help="NATS server (default: LEGATO_NATS_URL, the dev state file, ...)")
    parser.add_argument("--executor-id", help="name reported with results (default: host-pid)")
    parser.add_argument(
        "--ack-wait",
        type=float,
        default=None,
        help="seconds before an attempt without heartbeat is redelivered (default: 30)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m legato.executor``: serve one work queue until SIGTERM; the exit code."""
    args = parse_args(argv)
    try:
        # No database: the executor is stateless (dead letters go over NATS to a stateful service).
        settings = load_settings(overrides={"nats_url": args.nats_url})
    except SettingsError as exc:
        print(f"legato executor: {exc}", file=sys.stderr)
        return 2
    # Imported here so `--help` and bad settings answer fast.
    from legato.executor.service import DEFAULT_ACK_WAIT, ExecutorOptions, run_executor

    ack_wait = DEFAULT_ACK_WAIT if args.ack_wait is None else args.ack_wait
    try:
        ExecutorOptions(queue=args.queue, concurrency=args.concurrency, ack_wait=ack_wait)
    except ValueError as exc:
        print(f"legato executor: {exc}", file=sys.stderr)
        return 2
    return run_service(
        "executor",
        run_executor(
            settings,
            queue=args.queue,
            concurrency=args.concurrency,
            executor_id=args.executor_id,
            ack_wait=ack_wait,
        ),
        event_loop=settings.event_loop,
    )


if __name__ == "__main__":
    sys.exit(main())
