"""The `hrmlab` command. Parses arguments, resolves configs and calls the pipeline or one stage.

User mistakes (unknown preset / protocol / forecaster / config key, corrupt cache, missing checkpoint)
raise `UserError` anywhere below; they are printed here as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hrmlab.errors import UserError

log = logging.getLogger("hrmlab")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            json.dump(data, fh, indent=2)
        log.info("wrote %s", path)


# ----------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from hrmlab.backends.local import make_backend
    from hrmlab.config import apply_overrides
    from hrmlab.evaluate.protocols import get_protocol
    from hrmlab.evaluate.runner import evaluate, format_table
    from hrmlab.forecast.registry import parse_forecasters
    from hrmlab.settings import EvaluateSettings

    settings = EvaluateSettings()
    if args.preset:
        from hrmlab.presets import load_preset

        exp = load_preset(args.preset)
        settings = EvaluateSettings(world=exp.world, planner=exp.planner, eval=exp.eval)
    overrides = list(args.set or [])
    overrides += [f"eval.protocol={args.protocol}"] if args.protocol else []
    overrides += [f"eval.episodes={args.episodes}"] if args.episodes is not None else []
    overrides += [f"eval.start={args.start}"] if args.start is not None else []
    settings = apply_overrides(settings, overrides)
    get_protocol(settings.eval.protocol)
    specs = parse_forecasters(args.forecasters)
    backend = make_backend(args.workers)
    results = evaluate(settings.eval, settings.world, settings.planner, specs, backend)
    print(format_table(results))
    _write_json(args.json, results)
    return 0


# -------------------------------------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    from hrmlab.bench import BENCHMARKS, run_benchmarks

    names = args.only.split(",") if args.only else ["closed_loop", "planner", "collect", "loader", "hrm_train",
                                                    "expert"]
    for n in names:
        if n not in BENCHMARKS:
            raise UserError(f"unknown benchmark {n!r}; valid choices: {', '.join(BENCHMARKS)}")
    out = run_benchmarks(names)
    for k, v in out["figures"].items():
        print(f"{k:<40} {v}")
    _write_json(args.json, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrmlab", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("evaluate", help="closed-loop evaluation of forecasters + planner on a protocol")
    p.add_argument("--protocol", help="seed-v1 | seed-v2 | seed-v3 | seed-v4 | standard (default standard)")
    p.add_argument("--forecasters", default="ignore,zero,constant-velocity,bounce-aware,oracle",
                   help="comma list of physics forecasters and/or NAME=CHECKPOINT for trained models")
    p.add_argument("--episodes", type=int, help="episodes per forecaster (default 1000)")
    p.add_argument("--start", type=int, help="first episode index (seed protocols: original episode s)")
    p.add_argument("--preset", help="take world/planner/eval settings from this preset")
    p.add_argument("--workers", type=int, default=1, help="processes (1 = this process)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. planner.time_index=seed")
    p.add_argument("--json", help="also write the results as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="measure the performance figures quoted in docs/benchmarks.md")
    p.add_argument("--only", help="comma list of benchmarks (default: all)")
    p.add_argument("--json", help="also write the figures as JSON here")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as exc:
        print(f"hrmlab: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print("hrmlab: interrupted; finished stages are kept and a rerun continues", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
