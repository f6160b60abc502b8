"""``legato dev``: the command's flags handed to the dev stack (``legato.devstack.stack``)."""

from __future__ import annotations

import argparse

from legato.devstack.stack import DevOptions, run_dev


def cmd_dev(args: argparse.Namespace) -> int:
    """Run the whole system locally until Ctrl-C; the exit code."""
    return run_dev(
        DevOptions(
            state_dir=args.state_dir,
            nats_url=args.nats_url,
            database_url=args.database_url,
            examples=args.examples,
            no_demo=args.no_demo,
            executors=args.executors,
            concurrency=args.concurrency,
        )
    )
