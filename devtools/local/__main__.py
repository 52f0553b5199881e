"""`python -m devtools.local` (`make local`, `make local-up`): start the pipeline (run.py), upload a
sermon, watch the job (view.py) and sum it up (report.py)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.local.processes import ROOT
from devtools.local.report import report, summary
from devtools.local.run import Pipeline
from devtools.local.view import watch


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C (SIGINT) stops it however it was started: a shell's background job starts with
    # SIGINT ignored, which Python keeps, so a local-up started from a script's `cmd &` (a CI
    # job, this project's e2e tests under one) ran on after its SIGINT until killed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(
        prog="python -m devtools.local",
        description="The whole Sluice pipeline on one machine, no AWS account.",
    )
    parser.add_argument("--up", action="store_true", help="keep running after the job (local-up)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds the job may take")
    parser.add_argument("--report", type=Path, help="write the end state as JSON here")
    parser.add_argument(
        "--view",
        choices=("auto", "live", "lines"),
        default="auto",
        help="live table (a terminal) or one line per change",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "local")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    live = args.view == "live" or (args.view == "auto" and sys.stdout.isatty())
    pipeline = Pipeline(workdir=args.workdir)
    try:
        print("starting: moto, durable runner, worker web + tasks, sqsd …", flush=True)
        pipeline.up()
        upload = pipeline.upload()
        print(f"uploaded {upload}: the S3 notification starts the job", flush=True)
        snap = watch(pipeline, upload, timeout_s=args.timeout, live=live)
        print(summary(snap, pipeline), flush=True)
        if args.report:
            args.report.write_text(json.dumps(report(pipeline, snap, upload), indent=2))
        if args.up:
            print("\nstill running (Ctrl-C stops it). Point the CLI at it:", flush=True)
            for key, value in pipeline.cli_env().items():
                print(f"  export {key}='{value}'")
            print("  sluice dlq peek --queue events; sluice jobs show <event-id>", flush=True)
            with _until_interrupted():
                while True:
                    assert pipeline.procs is not None
                    pipeline.procs.check()
                    time.sleep(1)
        return 0 if snap.complete else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Say what broke (and where its log is); the report records it for the e2e test.
        print(f"local run failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        print(f"process logs: {args.workdir}/*.log", file=sys.stderr, flush=True)
        if args.report:
            args.report.write_text(
                json.dumps({"complete": False, "error": f"{type(exc).__name__}: {exc}"})
            )
        return 1
    finally:
        pipeline.close()


@contextmanager
def _until_interrupted() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        print("stopping", flush=True)


if __name__ == "__main__":
    sys.exit(main())
