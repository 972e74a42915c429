"""The `hrmlab` command. Parses arguments, resolves configs and calls the pipeline or one stage.

User mistakes (unknown preset / protocol / forecaster / config key, corrupt cache, missing checkpoint)
raise `UserError` anywhere below; they are printed here as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from hrmlab.errors import UserError
from hrmlab.validate import count_option, writable_dir, writable_file

log = logging.getLogger("hrmlab")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _write_json(path: str | None, data: dict) -> None:
    if path:
        from hrmlab.fileio import write_json_atomic

        write_json_atomic(path, data)
        log.info("wrote %s", path)


# ----------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from hrmlab.backends.local import make_backend
    from hrmlab.config import apply_overrides
    from hrmlab.evaluate.protocols import get_protocol
    from hrmlab.evaluate.runner import evaluate, format_table
    from hrmlab.forecast.registry import parse_forecasters
    from hrmlab.evaluate.runner import EvaluateSettings

    if args.json:
        writable_file(args.json, "--json")
    settings = EvaluateSettings()
    if args.preset:
        from hrmlab.presets import load_preset

        from hrmlab.experiments.families import family_of

        exp = load_preset(args.preset)
        family_of(exp).require("evaluate", args.preset)
        settings = EvaluateSettings(world=exp.world, planner=exp.planner, eval=exp.eval)
    overrides = list(args.set or [])
    overrides += [f"eval.protocol={args.protocol}"] if args.protocol else []
    overrides += [f"eval.episodes={args.episodes}"] if args.episodes is not None else []
    overrides += [f"eval.start={args.start}"] if args.start is not None else []
    settings = apply_overrides(settings, overrides)
    protocol = get_protocol(settings.eval.protocol)
    if protocol.world is not None:  # the protocol's own world is the base; `--set world.*` applies on top
        settings = apply_overrides(dataclasses.replace(settings, world=protocol.world), overrides)
    specs = parse_forecasters(args.forecasters)
    from hrmlab.policies import parse_policies

    policies = parse_policies(args.policy)
    backend = make_backend(args.workers)
    results = evaluate(settings.eval, settings.world, settings.planner, specs, backend, policies=policies)
    print(format_table(results))
    _write_json(args.json, results.to_json())
    return 0


# ---------------------------------------------------------------------------------------- run & co.
def _resolve(args):
    """Preset (default quick) + --set overrides, shrunk by --smoke."""
    from hrmlab.presets import resolve

    return resolve(args.preset, args.set or [], smoke=getattr(args, "smoke", False))


def _options(args, cfg):
    from hrmlab.experiments.grid.stages import RunOptions

    out = Path(args.out) if getattr(args, "out", None) else Path("runs") / (cfg.name + ("-smoke" if args.smoke else ""))
    cache = _cache(args)
    writable_dir(out, "--out" if getattr(args, "out", None) else "run folder")  # before any stage runs
    writable_dir(cache, "--cache" if getattr(args, "cache", None) else "cache")
    return RunOptions(out=out, cache=cache, smoke=args.smoke, workers=getattr(args, "workers", None),
                      gpus=getattr(args, "gpus", None), allow_cpu=getattr(args, "allow_cpu", False),
                      progress=not getattr(args, "no_progress", False))


def cmd_run(args) -> int:
    cfg = _resolve(args)
    opts = _options(args, cfg)
    from hrmlab.experiments.families import family_of

    family = family_of(cfg)
    if args.backend == "modal":
        if not family.modal:
            raise UserError(f"preset {cfg.name} ({family.name} family) runs locally only: no Modal adapter yet")
        from hrmlab.cloud.launcher import run_on_modal

        return run_on_modal(args.preset or "quick", args.set or [], smoke=args.smoke, out=opts.out)
    results = family.run(cfg, opts)
    family.print_summary(results, cfg)
    print(f"\nrun directory: {opts.out}  (results.json, report.md, report.html) · {results.seconds:.0f}s")
    return 0


def cmd_collect(args) -> int:
    from hrmlab.backends.local import make_backend
    from hrmlab.experiments.grid.stages import stage_data

    from hrmlab.experiments.families import family_of

    cfg = _resolve(args)
    family_of(cfg).require("collect", cfg.name)
    opts = _options(args, cfg)
    paths = stage_data(cfg, opts, make_backend(args.workers))
    print(f"dataset ready: {paths.root}")
    return 0


def cmd_train(args) -> int:
    from hrmlab.backends.local import make_backend
    from hrmlab.experiments.grid.stages import check_hardware, stage_data, stage_train

    from hrmlab.experiments.families import family_of

    cfg = _resolve(args)
    family_of(cfg).require("train", cfg.name)
    from hrmlab.forecast.models import get_kind

    get_kind(args.model)  # an unknown kind is a UserError naming the valid ones
    opts = _options(args, cfg)
    gpus = check_hardware(cfg, opts)
    paths = stage_data(cfg, opts, make_backend(args.workers))
    summary = stage_train(cfg, args.model, paths, opts, gpus)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}, indent=2))
    metrics = summary.get("forecast_metrics")
    if metrics:
        from hrmlab.evaluate.forecast_metrics import format_forecast_table

        print(format_forecast_table(metrics))
    return 0


def cmd_presets(args) -> int:
    from hrmlab.experiments.families import family_of
    from hrmlab.presets import preset_names, preset_data, load_preset

    for name in preset_names():
        cfg = load_preset(name)
        data = preset_data(name)
        detail = family_of(cfg).describe(cfg)
        print(f"{name:<22} {data.get('description', '')}")
        print(f"{'':<22} {detail}")
    return 0


def cmd_results(args) -> int:
    from hrmlab.report.report import compare_runs

    print(compare_runs([Path(d) for d in args.dirs]))
    return 0


def cmd_report(args) -> int:
    from hrmlab.report.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "results.json").is_file():
        raise UserError(f"{run_dir} has no results.json; run `hrmlab run` first")
    for path in write_report(run_dir):
        print(path)
    return 0


def cmd_render(args) -> int:
    from hrmlab.report.animate import render_episode

    run_dir = Path(args.run_dir)
    if not (run_dir / "results.json").is_file():
        raise UserError(f"{run_dir} has no results.json; run `hrmlab run` first")
    writable_file(args.out, "--out")
    forecasters = args.forecasters.split(",") if args.forecasters else None
    path = render_episode(run_dir, args.episode, forecasters, Path(args.out), protocol=args.protocol)
    print(path)
    return 0


def cmd_suites(args) -> int:
    from hrmlab.experiments.suites import run_suites

    cache = _cache(args)
    _check_multi_run_paths(args, cache)
    text = run_suites(Path(args.out), Path(args.runs), cache, smoke=args.smoke, workers=args.workers,
                      overrides=args.set or [], progress=not args.no_progress,
                      only=(_csv(args.only) or []) if args.only is not None else None)
    print(text)
    return 0


def _cache(args) -> Path:
    """The stage cache of this command: `--cache`, else $HRMLAB_CACHE, else .hrmlab_cache. A `--cache` is
    also exported as $HRMLAB_CACHE, so everything that finds the cache on its own (pool workers, the
    trainer's compile cache) uses the same folder."""
    from hrmlab.stage_cache import CACHE_ENV, default_cache

    if getattr(args, "cache", None):
        os.environ[CACHE_ENV] = str(Path(args.cache).resolve())
    return Path(args.cache) if getattr(args, "cache", None) else default_cache()


def _check_multi_run_paths(args, cache: Path) -> None:
    """`suites` / `study`: the document, the run folders and the cache are writable (before any run)."""
    writable_file(args.out, "--out")
    writable_dir(args.runs, "--runs")
    writable_dir(cache, "--cache" if args.cache else "cache")


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_study(args) -> int:
    from hrmlab.experiments.study import StudyConfig, run_study, smoke_study_defaults, study_paths

    study = StudyConfig()
    changes = {}
    if args.only is not None:  # given but naming nothing (`--only ,,`) is refused by run_study, not ignored
        changes["worlds"] = _csv(args.only) or []
    if args.models is not None:
        changes["models"] = _csv(args.models) or []
    if args.lrs is not None:
        try:
            changes["lrs"] = [float(v) for v in _csv(args.lrs) or []]
        except ValueError:
            raise UserError(f"--lrs takes comma-separated numbers, got {args.lrs!r}") from None
    if args.compute_scales is not None:
        try:
            changes["compute_scales"] = [float(v) for v in _csv(args.compute_scales) or []]
        except ValueError:
            raise UserError(f"--compute-scales takes comma-separated numbers, got {args.compute_scales!r}") from None
    if args.compute_worlds is not None:
        changes["compute_worlds"] = _csv(args.compute_worlds) or []
    if args.stateful_arms is not None:
        changes["stateful_arms"] = _csv(args.stateful_arms) or []
    if args.seeds is not None:  # the ranges of these four are checked by run_study (one place)
        changes["seeds"] = args.seeds
    if args.selection_seeds is not None:
        changes["selection_seeds"] = args.selection_seeds
    if args.grid_extensions is not None:
        changes["grid_extensions"] = args.grid_extensions
    if args.episodes is not None:
        changes["episodes"] = args.episodes
    if args.smoke:
        for name, value in smoke_study_defaults().items():
            changes.setdefault(name, value)
    if args.budgets is not None:  # learning curves (issue 30): experiments/study/budgets.py, docs/scaling.md
        from hrmlab.experiments.study import budgets as curves_mod

        curves = curves_mod.CurveConfig(budgets=curves_mod.parse_budgets(args.budgets),  # bad input: exit 2 first
                                        capacity_budget=args.capacity_budget or 0)
        if args.backend == "modal":
            raise UserError("--budgets runs on this machine's pool or on Slurm (--backend local|slurm), not on Modal")
        backend = None
        if args.backend == "slurm" and not args.tabulate_only:
            from hrmlab.backends.slurm import SlurmBackend, parse_options

            backend = SlurmBackend(_cache(args) / "slurm", args.slurm_cluster, parse_options(args.slurm_option),
                                   args.retries)
        for name, value in curves_mod.curve_study_defaults().items():
            changes.setdefault(name, value)
        cache = _cache(args)
        args.out, args.json = curves_mod.curve_paths(args.out, args.json, args.smoke, Path(args.runs))
        writable_file(args.out, "--out")
        if not args.tabulate_only:
            writable_file(args.json, "--json")
            _check_multi_run_paths(args, cache)
        print(curves_mod.run_curves(dataclasses.replace(study, **changes), curves, args.out, args.json, cache,
                                    Path(args.runs), smoke=args.smoke, overrides=args.set or [], workers=args.workers,
                                    progress=not args.no_progress, tabulate_only=args.tabulate_only,
                                    backend=backend))
        return 0
    study = dataclasses.replace(study, **changes)
    cache = _cache(args)
    args.out, args.json = study_paths(args.out, args.json, args.smoke, Path(args.runs))
    if args.tabulate_only:
        writable_file(args.out, "--out")
    else:
        writable_file(args.json, "--json")
        _check_multi_run_paths(args, cache)
    run_args = dict(study=study, out_md=args.out, out_json=args.json, cache=cache, runs_dir=Path(args.runs),
                    smoke=args.smoke, overrides=args.set or [], workers=args.workers,
                    progress=not args.no_progress, tabulate_only=args.tabulate_only, force=args.force)
    if args.backend == "modal" and args.stack == "on":
        raise UserError("--stack on: the Modal engine trains each run in its own container; use --backend local "
                        "or slurm to stack runs")
    if args.backend == "modal" and not args.tabulate_only:
        from hrmlab.cloud.launcher import study_on_modal

        text = study_on_modal(retries=args.retries, **run_args)
    else:
        engine = None
        if args.backend == "slurm" and not args.tabulate_only:
            from hrmlab.backends.slurm import parse_options
            from hrmlab.experiments.study.run import SlurmEngine

            engine = SlurmEngine(cache, args.slurm_cluster, parse_options(args.slurm_option), args.retries,
                                 args.stack)
        elif not args.tabulate_only:
            from hrmlab.experiments.study.run import LocalEngine

            engine = LocalEngine(args.workers, args.stack)
        text = run_study(engine=engine, **run_args)
    print(text)
    return 0


# -------------------------------------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    try:  # the measurements live outside the runtime package (src/hrmlab_bench/)
        from hrmlab_bench.registry import BENCHMARKS, run_benchmarks
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("hrmlab_bench"):
            raise
        raise UserError("hrmlab bench needs the hrmlab_bench package (src/hrmlab_bench/), which is not "
                        "importable here; install the repository with `pip install -e .`") from None

    if args.json:
        writable_file(args.json, "--json")
    names = args.only.split(",") if args.only else ["closed_loop", "planner", "collect", "loader", "hrm_train",
                                                    "expert", "forecast"]
    for n in names:
        if n not in BENCHMARKS:
            raise UserError(f"unknown benchmark {n!r}; valid choices: {', '.join(BENCHMARKS)}")
    out = run_benchmarks(names)
    for k, v in out["figures"].items():
        print(f"{k:<40} {v}")
    _write_json(args.json, out)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: a bad option is one line (`hrmlab: error: ...`, exit code 2),
    raised as a UserError so `main` prints it like every other user error."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hrmlab", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_run_args(p, preset_required=False):
        p.add_argument("preset", nargs=None if preset_required else "?", help="preset name (hrmlab presets); default quick")
        p.add_argument("--smoke", action="store_true", help="toy sizes: every stage for real, in seconds")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. train_hrm.epochs=2")
        p.add_argument("--out", help="run directory (default runs/PRESET)")
        p.add_argument("--cache", help="stage cache (default $HRMLAB_CACHE or .hrmlab_cache)")
        p.add_argument("--workers", type=count_option(1),
                       help="local processes for collection/evaluation (default: one per core)")
        p.add_argument("--gpus", type=count_option(0),
                       help="GPUs to train on (default: all visible, capped by the preset)")
        p.add_argument("--allow-cpu", action="store_true", help="run a GPU preset full size on CPU anyway")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def add_multi_run_args(p, out: str | None, runs_of: str, presets: str, out_help: str = ""):
        """The options of `suites` and `study`: both run many presets into run directories and write one
        markdown document, so they take the same options (only the defaults and wording differ)."""
        p.add_argument("--out", default=out, help=f"markdown file to write (default {out_help or out})")
        p.add_argument("--runs", default="runs", help=f"where the {runs_of} run directories go")
        p.add_argument("--cache", help="stage cache (default $HRMLAB_CACHE or .hrmlab_cache)")
        p.add_argument("--smoke", action="store_true", help="toy sizes")
        p.add_argument("--workers", type=count_option(1), help="local processes for collection/evaluation")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"override for every {presets}")
        p.add_argument("--no-progress", action="store_true", help="no progress bars (progress lines go to the log)")

    p = sub.add_parser("run", help="the whole experiment: collect → train → evaluate → report (default preset quick)")
    add_run_args(p)
    p.add_argument("--backend", default="local", choices=("local", "modal"), help="local (default) or modal")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("presets", help="list presets with parameter counts, data size and hardware")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("collect", help="generate and merge a preset's training data (cached)")
    add_run_args(p, preset_required=True)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train", help="train a preset's HRM or LSTM (data collected first if needed)")
    add_run_args(p, preset_required=True)
    p.add_argument("--model", required=True, help="hrm | lstm | hrm-act | trm")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("suites", help="train and evaluate every scenario suite; write the table (docs/suites.md)")
    add_multi_run_args(p, out="docs/suites.md", runs_of="suite", presets="suite preset")
    p.add_argument("--only", help="comma-separated suites to run and tabulate, e.g. suite-rush,suite-patrol")
    p.set_defaults(func=cmd_suites)

    p = sub.add_parser("study", help="every learned model vs physics over training seeds at equal budget "
                                     "(docs/study.md)")
    p.add_argument("--only", help="comma-separated world presets (default: quick and every suite, the suites with most room above physics first)")
    p.add_argument("--models", help="comma-separated learned models, rolled out direct (default: lstm,hrm,hrm-act,trm)")
    p.add_argument("--stateful-arms", help="recurrent models also trained one-step and rolled out stateful, each "
                                           "an arm of its own, e.g. lstm-stateful (default: lstm; '' for none)")
    p.add_argument("--lrs", help="candidate learning rates, chosen on validation (default 0.001,0.003,0.01)")
    p.add_argument("--grid-extensions", type=int,
                   help="times an arm's rate grid may grow by one step beyond the edge its choice sits at "
                        "(default 1; 0 keeps the grid)")
    p.add_argument("--seeds", type=int, help="evaluated training seeds per arm, trained fresh at the chosen rate "
                                             "(default 3)")
    p.add_argument("--selection-seeds", type=int,
                   help="seeds trained at every candidate rate, never evaluated; the lowest mean validation loss "
                        "wins (default 1: runs per arm = rates x 1 + seeds, 6)")
    p.add_argument("--compute-scales", help="test-time compute of hrm-act/trm: multiples of the trained recursion "
                                            "to evaluate besides ×1 (default 0.5,2,4; '' skips)")
    p.add_argument("--compute-worlds", help="worlds that get the test-time-compute evaluation (default: none; "
                                            "about 5-6x a world's main evaluation), e.g. quick")
    p.add_argument("--episodes", type=int, help="test episodes per world (default 1000)")
    add_multi_run_args(p, out=None, runs_of="study", presets="world preset",
                       out_help="docs/study.md; with --smoke RUNS/study-smoke.md, never the committed document")
    p.add_argument("--json", help="compact results file (finished worlds are reused); default: beside --out, "
                                  "same name with .json (docs/study.json for the default --out)")
    p.add_argument("--force", action="store_true",
                   help="write into a results file that holds another study's settings (its worlds of the same "
                        "name are replaced); without it such a study stops with an error before any work")
    p.add_argument("--tabulate-only", action="store_true",
                   help="recompute the document from the results file and its episodes file (-episodes.json "
                        "beside it) alone; train and evaluate nothing")
    p.add_argument("--budgets", help="learning curves instead (docs/scaling.md): multiples of the budget-1 optimiser "
                                     "steps, increasing, e.g. 1,2,4,8; one run per arm and seed to the largest, "
                                     "a snapshot at each (default world suite-clockwork, models hrm-act,trm)")
    p.add_argument("--capacity-budget", type=int,
                   help="with --budgets: also train the best arm at this budget with its width doubled")
    p.add_argument("--backend", default="local", choices=("local", "modal", "slurm"),
                   help="where each world's training runs and evaluation chunks run: this machine's process pool "
                        "(default), Modal containers (docs/modal.md) or Slurm array jobs (submitit; docs/slurm.md); "
                        "the documents are written here either way")
    p.add_argument("--retries", type=count_option(0), default=1,
                   help="modal/slurm: times the failed runs of a map are resubmitted before the study stops naming "
                        "them (default 1; finished runs stay cached)")
    p.add_argument("--slurm-option", action="append", metavar="KEY=VALUE",
                   help="submitit parameter of every array task (repeatable), e.g. slurm_partition=gpu, "
                        "gpus_per_node=1, timeout_min=600, slurm_array_parallelism=32")
    p.add_argument("--stack", default="auto", choices=("auto", "on", "off"),
                   help="train a world's runs that share a model shape and data (seeds, candidate rates) as one "
                        "stacked ensemble per task: auto = where they train on a GPU (default; on a CPU it is "
                        "slower, docs/benchmarks.md), on, off. Local and Slurm engines")
    p.add_argument("--slurm-cluster", default="slurm", choices=("slurm", "local"),
                   help="slurm (default) submits with sbatch; local runs each array task as a local process "
                        "through submitit (a dry run of the same jobs without a cluster)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("results", help="put several runs side by side")
    p.add_argument("dirs", nargs="+", help="run directories")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="(re)write report.md / report.html / plots / animations of a run")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("render", help="animate one closed-loop episode of a run")
    p.add_argument("run_dir")
    p.add_argument("--episode", type=int, default=None, help="episode index (default: one where forecasters disagree)")
    p.add_argument("--forecasters", help="comma list (default: the forecasters that disagree in that episode)")
    p.add_argument("--protocol", help="which of the run's evaluations (default: its main protocol)")
    p.add_argument("--out", required=True, help="output .gif or .mp4")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("evaluate", help="closed-loop evaluation of forecasters + planner on a protocol")
    p.add_argument("--protocol", help="seed-v1 | seed-v2 | seed-v3 | seed-v4 | standard (default standard)")
    p.add_argument("--forecasters", default="ignore,zero,constant-velocity,bounce-aware,oracle",
                   help="comma list of physics forecasters, NAME=CHECKPOINT for models trained by hrmlab, "
                        "NAME=seed:SCRIPT:PATH for weights saved by an original script (e.g. seed:hrm_cloudv3:best_hrm.pt)")
    p.add_argument("--episodes", type=int, help="episodes per forecaster (default 1000)")
    p.add_argument("--start", type=int, help="first episode index (seed protocols: original episode s)")
    p.add_argument("--preset", help="take world/planner/eval settings from this preset")
    p.add_argument("--workers", type=count_option(1), default=1, help="processes (1 = this process)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. planner.time_index=seed")
    p.add_argument("--policy", action="append", metavar="NAME=MODULE:FACTORY",
                   help="also run an outside policy on the same episodes (repeatable), e.g. "
                        "rnd=hrmlab.policies:random_policy; see docs/gym.md")
    p.add_argument("--json", help="also write the results as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="measure the performance figures quoted in docs/benchmarks.md")
    p.add_argument("--only", help="comma list of benchmarks (default: all)")
    p.add_argument("--json", help="also write the figures as JSON here")
    p.set_defaults(func=cmd_bench)
    return parser


def _user_error(exc: UserError) -> int:
    """One line on stderr, exit code 2; the traceback of outside code that raised (a --policy) with -v."""
    detail = getattr(exc, "detail", "")
    if detail:
        log.debug("traceback:\n%s", detail.rstrip())
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()) or type(exc).__name__
    print(f"hrmlab: error: {text}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    from hrmlab.threads import configure_process

    configure_process()  # before torch loads: OpenMP threads that wait passively (hrmlab/threads.py)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as exc:
        return _user_error(exc)
    _setup_logging(getattr(args, "verbose", False))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from hrmlab.stage_cache import CACHE_ENV

    cache_env = os.environ.get(CACHE_ENV)  # `--cache` exports it for this command only (_cache)
    try:
        return args.func(args)
    except UserError as exc:
        return _user_error(exc)
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print("hrmlab: interrupted; finished stages are kept and a rerun continues", file=sys.stderr)
        return 130
    finally:
        if cache_env is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = cache_env


if __name__ == "__main__":
    sys.exit(main())
