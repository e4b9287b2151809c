"""The ``rnnzoo`` command: ``rnnzoo bench`` (what models learn: the capability benchmark), ``rnnzoo list``
(the registry), ``rnnzoo speed`` (timings) and ``rnnzoo inspect`` (a layer's implicit T×T operator as heatmaps).

    rnnzoo bench                                   # quick suite: parity, which models extrapolate
    rnnzoo bench --suite full --seeds 3
    rnnzoo bench --suite my_suite.toml --out results/mine
    rnnzoo bench --report results/bench/results.json
    rnnzoo list
    rnnzoo speed --quick
    rnnzoo speed --model mingru --model nn.GRU --batch 8 --length 512 --d-model 256
    rnnzoo speed --step --model gla --batch 1 --length 65536 --d-model 64
    rnnzoo inspect mamba --length 64 --kw d_state=8 --log

Subcommands are argparse subparsers, each with a ``func(args) -> exit code``. Bad arguments (unknown
model, mode or dtype) exit with code 2 and a message naming the valid choices.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .bench import capability, inspect, machine, report, speed, suites
from .bench.files import DirectoryBusy, DirectoryLock, write_json_atomic
from .registry import list_models, model_info

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["build_parser", "main"]


def _console() -> Console:
    """A rich console; 160 columns wide when not writing to a terminal (rich's default, 80, squeezes tables)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 160
    return console


def _list(args: argparse.Namespace) -> int:
    """Print the registry as a table."""
    from rich.table import Table

    table = Table(title="rnnzoo models")
    for name in ("name", "family", "engine", "paper", "negative_eigenvalues"):
        table.add_column(name)
    for m in list_models():
        table.add_row(m.name, m.family, m.engine, m.paper, "yes" if m.negative_eigenvalues else "no")
    _console().print(table)
    return 0


def _train_step(args: argparse.Namespace) -> int:
    """Time one training step of every chosen model (default: the tier-1 models) beside lstm's; write JSON."""
    import dataclasses

    from .bench import train_step

    if args.quick or args.step or args.mode or args.forward_only:
        args.error("--train-step times whole training steps; drop --quick/--step/--mode/--forward-only")
    _check_output_file(args, "--json", Path(args.json))
    registered = {m.name for m in list_models()}
    names = args.model or list(suites.tier_models(1))
    unknown = [n for n in names if n not in registered]
    if unknown:
        args.error(f"--train-step needs registered models; unknown: {', '.join(unknown)} (see `rnnzoo list`)")
    batch, length, threads = args.batch or 64, args.length or 40, args.threads or 1
    head = speed.header(threads, "cpu", ["rnnzoo", *args.argv])
    console = _console()
    with console.status("timing training steps") as status:
        rows = train_step.measure(
            names, batch=batch, length=length, params=args.params, rounds=args.rounds, threads=threads,
            on_round=lambda r: status.update(f"round {r + 1}"),
        )  # fmt: skip
    head.update(batch=batch, length=length, params=args.params, rounds=args.rounds)
    caption = (
        f"{head['date']}, (batch, length) = ({batch}, {length}), ~{args.params:,} parameters, 2 blocks, "
        f"{threads} thread(s), medians of {args.rounds} rounds; {head['cpu']}, load average "
        f"{head['loadavg_1min']} at start"
    )
    train_step.report(rows, console, caption)
    write_json_atomic(args.json, {"header": head, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2)
    console.print(f"wrote {args.json}")
    return 0


def decode_models() -> tuple[str, ...]:
    from .bench.decode import DEFAULT_MODELS

    return DEFAULT_MODELS


def _decode(args: argparse.Namespace) -> int:
    """Greedy decoding, eager against compiled step, for each chosen model; write JSON."""
    import dataclasses

    from .bench import decode

    if args.quick or args.step or args.mode or args.forward_only or args.train_step:
        args.error("--decode times greedy decoding; drop --quick/--step/--mode/--forward-only/--train-step")
    _check_output_file(args, "--json", Path(args.json))
    names = args.model or list(decode.DEFAULT_MODELS)
    unknown = [n for n in names if n not in {m.name for m in list_models()}]
    if unknown:
        args.error(f"--decode needs registered models; unknown: {', '.join(unknown)} (see `rnnzoo list`)")
    context, params, rounds, threads = args.length or 8192, args.params or 1_000_000, args.rounds or 5, args.threads or 1
    head = speed.header(threads, "cpu", ["rnnzoo", *args.argv])
    console = _console()
    with console.status("decoding (the first compiled call compiles, seconds)"):
        rows = decode.measure(names, context=context, tokens=100, params=params, n_layers=4, rounds=rounds, threads=threads)
    head.update(context=context, params=params, rounds=rounds)
    caption = (
        f"{head['date']}, prompt {context:,} tokens, ~{params:,} parameters, 4 blocks, {threads} thread(s), medians "
        f"of {rounds} rounds of 100 tokens; {head['cpu']}, load average {head['loadavg_1min']} at start"
    )
    decode.report(rows, console, caption)
    write_json_atomic(args.json, {"header": head, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2)
    console.print(f"wrote {args.json}")
    return 0 if all(r.same_tokens for r in rows) else 1


def _speed(args: argparse.Namespace) -> int:
    """Time the chosen targets (or the --quick suite, or --step rows), print the tables, write the JSON."""
    if args.decode:
        return _decode(args)
    if args.train_step:
        args.params, args.rounds = args.params or 30_000, args.rounds or 15
        return _train_step(args)
    _check_output_file(args, "--json", Path(args.json))
    args.batch, args.length, args.threads = args.batch or 8, args.length or 1024, args.threads or 2
    if args.quick and (args.model or args.mode or args.step):
        args.error("--quick runs a preset suite; drop --model/--mode/--step")
    if args.step and (args.mode or args.forward_only):
        args.error("--step times layer.step (no modes, forward only); drop --mode/--forward-only")
    if not args.quick and not args.model:
        args.error(f"choose targets with --model NAME (valid names: {', '.join(speed.target_names())}) or use --quick")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        args.error(f"bad --device {args.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        args.error("--device cuda: CUDA is not available")
    try:
        shape = (args.batch, args.length, args.d_model)
        if args.quick:
            specs = speed.quick_specs()
        elif args.step:
            specs = speed.step_specs(args.model, shape, args.dtype)
        else:
            specs = speed.make_specs(args.model, shape, args.dtype, args.mode)
    except ValueError as e:
        args.error(str(e))

    head = speed.header(args.threads, device, ["rnnzoo", *args.argv])
    console = _console()
    with console.status("timing") as status:
        records = speed.run(
            specs,
            threads=args.threads,
            device=device,
            repeats=args.repeats,
            budget_s=args.budget,
            forward_only=args.forward_only,
            on_spec=lambda s: status.update(f"timing {s.target} {s.mode} at ({s.batch}, {s.length}, {s.d_model})"),
        )
    speed.report(records, console, head)
    speed.write_json(args.json, records, head)
    console.print(f"wrote {args.json}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    """Materialise the layer's operator for a random input and plot some of its groups."""
    try:
        kwargs = inspect.parse_kwargs(args.kw)
        info = model_info(args.model)
    except ValueError as e:
        args.error(str(e))
    if not inspect.materializes(info.cls):
        valid = ", ".join(m.name for m in list_models() if inspect.materializes(m.cls))
        args.error(f"{args.model} does not materialise its operator (no `materialize`); models that do: {valid}")
    out = Path(args.out or f"operator_{args.model}.png")
    _check_output_file(args, "--out", out)
    try:
        layer = inspect.build_layer(args.model, args.d_model, kwargs, args.checkpoint, args.seed)
    except (TypeError, ValueError, RuntimeError, OSError) as e:
        args.error(f"cannot build {args.model} with d_model={args.d_model}, {kwargs or 'default settings'}: {e}")
    M = inspect.operator(layer, inspect.random_input(layer, args.length, args.seed))
    groups = args.group or list(range(min(4, M.shape[0])))
    if not all(0 <= g < M.shape[0] for g in groups):
        args.error(f"--group must lie in [0, {M.shape[0]}): {args.model} has {M.shape[0]} groups")
    source = f"checkpoint {Path(args.checkpoint).name}" if args.checkpoint else f"random init (seed {args.seed})"
    title = f"{args.model}: implicit operator M, T={args.length}, d_model={args.d_model}, {source}"
    inspect.plot_operator(M, groups, out, title, log=args.log)
    print(f"wrote {out}: M of {args.model} is {M.shape[0]} groups × {args.length} × {args.length}, showing {groups}")
    return 0


def _hold_out_dir(args: argparse.Namespace, out: Path) -> DirectoryLock:
    """Take ``out`` for this command before any work: one line and exit code 2 if it cannot be written or
    another rnnzoo process is writing there (two runs would overwrite each other's results)."""
    try:
        return DirectoryLock(out).acquire()
    except DirectoryBusy as e:
        args.error(f"--out {out}: {e}; wait for it or choose another --out")
    except OSError as e:
        args.error(f"--out {out}: cannot write there ({e.strerror or e})")


def _check_output_file(args: argparse.Namespace, option: str, path: Path) -> None:
    """Exit 2 now if ``path`` could not be written later, after the work is done."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        args.error(f"{option} {path}: is a directory; give a file name")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        args.error(f"{option} {path}: cannot write there (no writable directory {parent})")


def _run_resumable(console: Console, out: Path, events: list, train: Callable[[], list]) -> list | None:
    """``train()``, or None after Ctrl-C with a line saying how many finished runs are cached in ``out``."""
    try:
        return train()
    except KeyboardInterrupt:
        done = sum(e.result is not None for e in events)
        console.print(f"interrupted: {done} finished run(s) are cached in {out}; run again to resume")
        return None


def _failed(console: Console, events: list) -> int:
    """Report the runs that failed, if any; the exit code (1 if some failed, else 0)."""
    failed = [e for e in events if e.error]
    if failed:
        console.print(f"{len(failed)} run(s) failed: " + "; ".join(e.error for e in failed), markup=False)
    return 1 if failed else 0


def _bench_caption(head: dict) -> str:
    load = f"load average {head.get('loadavg_1min', '?')} at start"
    if head.get("loadavg_1min_end") is not None:
        load += f", {head['loadavg_1min_end']} at the end"
    return (
        f"{head.get('date', '?')}, rnnzoo {head.get('rnnzoo', '?')}, torch {head.get('torch', '?')} on "
        f"{head.get('cpu', '?')} ({head.get('cpu_count', '?')} CPUs, {head.get('threads', '?')} thread(s) per run, "
        f"{head.get('jobs', 1)} job(s), {load})"
    )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _plot_title(head: dict) -> str:
    suite, date, threads = head.get("suite", "?"), head.get("date", "?")[:10], head.get("threads", "?")
    return f"rnnzoo bench --suite {suite}, {date}, {threads} threads"


def _bench_report(args: argparse.Namespace) -> int:
    """Re-render the table and the plot of a results.json without training."""
    if args.suite or args.seeds or args.force or args.out:
        args.error("--report re-renders a results.json; drop --suite/--seeds/--force/--out")
    try:
        results, head, notes = report.load_results(args.report)
    except ValueError as e:
        args.error(str(e))
    plot = Path(args.plot or Path(args.report).with_name("accuracy.png"))
    _check_output_file(args, "--plot", plot)
    console = _console()
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    rows = report.summarize(results)
    report.print_tables(rows, console, _bench_caption(head))
    if rows:
        report.plot(rows, plot, _plot_title(head))
        console.print(f"wrote {plot}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Run a suite (training only what is not cached), print the tables, write results.json and the plot."""
    if args.report:
        return _bench_report(args)
    if args.suite == "lm":
        return _bench_lm(args)
    if args.model or args.set:
        args.error("--model and --set go with --suite lm")
    try:
        suite = suites.resolve_suite(args.suite or "quick")
    except suites.SuiteError as e:
        args.error(str(e))
    if args.seeds:
        suite = suite.with_seeds(args.seeds)
    if args.threads:
        suite = suite.with_threads(args.threads)
    console = _console()
    for note in suite.notes:
        console.print(f"note: {note}", highlight=False)
    if not suite.models:
        args.error(f"suite {suite.name!r}: none of its models is registered")
    out = Path(args.out or "results/bench")
    if args.plot:
        _check_output_file(args, "--plot", Path(args.plot))
    lock = _hold_out_dir(args, out)
    try:
        return _bench_in(args, suite, out, console)
    finally:
        lock.release()


def _bench_lm(args: argparse.Namespace) -> int:
    """``rnnzoo bench --suite lm``: language models of every tier-1 mixer and the hybrids on real text."""
    from .bench import lm
    from .train import ConfigError, load_config

    try:
        base = load_config(None, "lm", args.set)
    except ConfigError as e:
        args.error(str(e))
    models = args.model or lm.lm_models()
    from .models.sequence_model import mixer_pattern

    for model in models:
        try:
            mixer_pattern(model)
        except ValueError as e:
            args.error(f"--model {model}: {e}")
    out = Path(args.out or "results/lm")
    lock = _hold_out_dir(args, out)
    console = _console()
    try:
        start = time.perf_counter()
        rows = lm.run_lm_bench(base, models, out, args.jobs, console)
    except ConfigError as e:
        args.error(str(e))
    finally:
        lock.release()
    caption = (
        f"{base.params:,} parameters, {base.steps * base.batch_size * base.context:,} training tokens of {base.data} "
        f"(context {base.context}); {(time.perf_counter() - start) / 60:.1f} min with {args.jobs} job(s)"
    )
    lm.report_lm(rows, console, caption)
    console.print(f"wrote {out / 'lm.json'}, {out / 'lm.png'}")
    return 0


def _bench_in(args: argparse.Namespace, suite: suites.Suite, out: Path, console: Console) -> int:
    """:func:`_bench` once ``out`` is held."""
    head = {**speed.header(suite.train.threads, "cpu", ["rnnzoo", *args.argv]), "suite": suite.name, "jobs": args.jobs}
    events: list[capability.RunDone] = []
    start = time.perf_counter()
    results = _run_resumable(console, out, events, lambda: capability.run_suite(
        suite, out, force=args.force, jobs=args.jobs, console=console, quiet=args.quiet, on_run=events.append
    ))  # fmt: skip
    if results is None:
        return 130
    head["wall_seconds"] = round(time.perf_counter() - start, 1)
    head["loadavg_1min_end"] = machine.loadavg_1min()
    trained = sum(not e.cached and not e.error for e in events)
    cached = sum(e.cached for e in events)
    rows = report.summarize(results)
    report.print_tables(rows, console, _bench_caption(head))
    report.write_results(out / "results.json", results, head, suite.notes)
    written = [str(out / "results.json")]
    if rows:
        plot = Path(args.plot or out / "accuracy.png")
        report.plot(rows, plot, _plot_title(head))
        written.append(str(plot))
    console.print(
        f"{len(events)} runs ({trained} trained, {cached} from the cache) in "
        f"{_duration(head['wall_seconds'])}; wrote {', '.join(written)}",
        highlight=False,
    )
    return _failed(console, events)


def _claims_list(args: argparse.Namespace) -> int:
    """Print the shipped claims: name, paper, the claim, what would reproduce it, and its runs."""
    from rich.table import Table

    from . import claims

    table = Table(title="rnnzoo claims (run them with `rnnzoo claims run [NAME ...] [--quick]`)", show_lines=True)
    for name in ("name", "paper", "claim", "expected", "runs"):
        table.add_column(name, overflow="fold")
    for c in claims.get_claims(every_tier=True):
        quick, full = c.quick_budget, c.budget
        runs = f"{'' if c.tier == 1 else f'tier {c.tier}; '}{len(c.arms)} arms; --quick {quick.steps} steps, {quick.params // 1000}k params; full {full.steps} steps"
        table.add_row(c.name, c.paper, c.statement, c.expected, runs)
    _console().print(table)
    return 0


def _train(args: argparse.Namespace) -> int:
    """``rnnzoo train``: check the configuration, hold --out, train (or resume) and print the result. Under
    torchrun, the main process holds --out and prints; the others are silent."""
    from .train import ConfigError, latest_checkpoint, load_checkpoint, load_config, train
    from .train.distributed import is_main_process

    base, latest = None, latest_checkpoint(Path(args.out)) if args.resume else None
    if latest is not None:  # continue from the run's own settings
        try:
            base = load_checkpoint(latest)[2]
        except ValueError as e:
            args.error(str(e))
    try:
        config = load_config(args.config, args.preset, args.overrides, base)
    except ConfigError as e:
        args.error(str(e))
    out, main_process = Path(args.out), is_main_process()
    lock = _hold_out_dir(args, out) if main_process else None
    console = _console()
    console.quiet = not main_process
    try:
        result = train(config, out, resume=args.resume, console=console)
    except ConfigError as e:
        args.error(str(e))
    except KeyboardInterrupt:
        console.print(f"interrupted: the checkpoints in {out / 'checkpoints'} hold the run; --resume continues it")
        return 130
    finally:
        if lock is not None:
            lock.release()
    bpb = "" if result.val_bpb is None else f", validation {result.val_bpb:.3f} bits per byte"
    console.print(
        f"{result.step:,} steps, {result.tokens:,} tokens in {result.seconds / 60:.1f} min{bpb}; wrote {out}",
        highlight=False,
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    """``rnnzoo eval``: bits per byte of each checkpoint on a split, and loss against position to --factor
    training contexts (a table and one plot with a curve per checkpoint)."""
    from rich.table import Table

    from .train import ConfigError
    from .train.evaluate import bucketed, eval_split, load_run, loss_by_position, plot_loss_by_position, split_scores

    _check_output_file(args, "--plot", Path(args.plot))
    try:
        runs = [load_run(path) for path in args.checkpoint]
        splits = [eval_split(run, args.data, args.split) for run in runs]
    except ConfigError as e:
        args.error(str(e))
    console = _console()
    table = Table(title=f"rnnzoo eval: {args.split} split", caption="loss in nats per token; positions from an empty state")
    curves = {}
    for run, split in zip(runs, splits):
        scores = split_scores(run, split, args.batches)
        length = args.factor * run.config.context
        try:
            curve = loss_by_position(run.model, split.tokens, length, args.sequences)
        except ConfigError as e:
            args.error(str(e))
        curves[run.name] = (curve, run.config.context)
        buckets = bucketed(curve, run.config.context)
        if not table.columns:
            for name in ("checkpoint", "step", "bpb", "loss", *(f"pos {label}" for label, _ in buckets)):
                table.add_column(name, justify="left" if name == "checkpoint" else "right")
        table.add_row(run.name, f"{run.step:,}", f"{scores['val_bpb']:.3f}", f"{scores['val_loss']:.3f}",
                      *(f"{loss:.3f}" for _, loss in buckets))  # fmt: skip
    console.print(table)
    plot_loss_by_position(curves, Path(args.plot), f"loss against position ({args.split})")
    console.print(f"wrote {args.plot}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """``rnnzoo generate``: stream a continuation of --prompt, then tokens per second."""
    from .train import ConfigError
    from .train.evaluate import load_run, per_second, stream_text, timed

    try:
        run = load_run(args.checkpoint)
        pieces = timed(stream_text(run, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                   args.seed, args.compile))  # fmt: skip
        sys.stdout.write(args.prompt)
        seconds, count = 0.0, 0
        for piece, seconds in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
            count += 1
    except (ConfigError, ValueError) as e:
        args.error(str(e))
    print(f"\n[{args.max_new_tokens} tokens in {seconds:.2f} s: {per_second(args.max_new_tokens, seconds):,.1f} tokens/s]",
          file=sys.stderr)  # fmt: skip
    return 0


def _hf(args: argparse.Namespace) -> int:
    """``rnnzoo hf export`` / ``rnnzoo hf import``: a run as a Hugging Face directory, and back (rnnzoo.hf.convert)."""
    from .train import ConfigError

    try:
        from transformers.utils import logging

        from .hf import convert
    except ImportError as e:
        args.error(str(e))
    logging.disable_progress_bar()  # the command prints one line
    try:
        out = (convert.export_run if args.hf_command == "export" else convert.import_run)(args.source, args.out)
    except ConfigError as e:
        args.error(str(e))
    print(f"wrote {out}")
    return 0


def _claims_run(args: argparse.Namespace) -> int:
    """Train the chosen claims' runs (what is not cached), print the verdicts, write claims.json and a PNG."""
    from . import claims

    try:
        chosen = claims.get_claims(args.names, every_tier=args.all)
    except ValueError as e:
        args.error(str(e))
    out = Path(args.out or ("results/claims-quick" if args.quick else "results/claims"))
    lock = _hold_out_dir(args, out)
    try:
        return _claims_run_in(args, chosen, out)
    finally:
        lock.release()


def _claims_run_in(args: argparse.Namespace, chosen: list, out: Path) -> int:
    """:func:`_claims_run` once ``out`` is held."""
    from .claims import run as claims_run

    console = _console()
    seeds = tuple(range(args.seeds))
    head = {**speed.header(args.threads, "cpu", ["rnnzoo", *args.argv]), "quick": args.quick, "jobs": args.jobs,
            "seeds": list(seeds)}  # fmt: skip
    events: list[capability.RunDone] = []
    start = time.perf_counter()
    outcomes = _run_resumable(console, out, events, lambda: claims_run.run_claims(
        chosen, out, quick=args.quick, seeds=seeds, jobs=args.jobs, threads=args.threads, force=args.force,
        console=console, quiet=args.quiet, on_run=events.append,
    ))  # fmt: skip
    if outcomes is None:
        return 130
    head["wall_seconds"] = round(time.perf_counter() - start, 1)
    head["loadavg_1min_end"] = machine.loadavg_1min()
    claims_run.print_table(outcomes, console, _bench_caption(head))
    claims_run.write_json(out / "claims.json", outcomes, head)
    claims_run.plot(outcomes, out / "claims.png", f"rnnzoo claims run{' --quick' if args.quick else ''}, "
                    f"{head['date'][:10]}, seeds {args.seeds}")  # fmt: skip
    console.print(
        f"{len(events)} runs in {_duration(head['wall_seconds'])}; wrote {out / 'claims.json'}, {out / 'claims.png'}",
        highlight=False,
    )
    return _failed(console, events)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _seconds(text: str) -> float:
    """A finite number of seconds >= 0 (``inf`` would time forever; ``nan`` and negatives mean nothing)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
        help=f"runs trained at once, one process each (default: the number of cores, {os.cpu_count()})",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="rnnzoo", description="Recurrent sequence models behind one API.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    be = commands.add_parser(
        "bench",
        help="train models on synthetic tasks: which solve them, which extrapolate (default: the quick suite)",
        description=(
            "The capability benchmark: train sequence models around registered layers on synthetic tasks at equal "
            "parameter count, then score them at training lengths and longer test lengths. With no arguments, the "
            "quick suite: parity with LSTM, Mamba with and without negative eigenvalues and softmax attention "
            "(whichever are registered). Finished runs are cached in --out by a hash of their configuration, so an "
            "interrupted suite resumes; prints a table per task and writes results.json and a PNG."
        ),
    )
    be.add_argument(
        "--suite", metavar="NAME|PATH",
        help=f"a built-in suite ({', '.join(suites.SUITES)}, lm; default quick) or a .toml/.yaml suite file",
    )  # fmt: skip
    be.add_argument("--seeds", type=_positive_int, metavar="N", help="run seeds 0..N-1 (report best and mean)")
    be.add_argument("--out", metavar="DIR", help="results and run cache (default results/bench)")
    be.add_argument("--force", action="store_true", help="rerun runs found in the cache")
    be.add_argument(
        "--threads", type=_positive_int, metavar="N", help="torch threads per run (default: the suite's, 1)"
    )
    _add_jobs(be)
    be.add_argument("--report", metavar="RESULTS_JSON", help="re-render a results.json's table and plot, no training")
    be.add_argument("--plot", metavar="PATH", help="the PNG (default accuracy.png beside results.json)")
    be.add_argument("--quiet", action="store_true", help="no progress output, only the tables")
    be.add_argument("--model", action="append", metavar="MIXER", help="--suite lm: a mixer or pattern (repeatable)")
    be.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="--suite lm: a training setting over the lm preset (repeatable, e.g. steps=200)")  # fmt: skip
    be.set_defaults(func=_bench, error=be.error)

    cl = commands.add_parser(
        "claims",
        help="papers' claims about what models can do: list them, or run them for a verdict",
        description=(
            "Each claim is a paper's statement about what a family of models can do, the runs that test it and a "
            "verdict rule fixed from the paper. `rnnzoo claims` lists them; `rnnzoo claims run [NAME ...]` trains "
            "the runs (cached and resumable like `bench`) and prints REPRODUCED / NOT REPRODUCED / INCONCLUSIVE "
            "per claim, writing claims.json and claims.png."
        ),
    )
    cl.set_defaults(func=_claims_list)
    claim_commands = cl.add_subparsers(dest="claims_command", metavar="{list,run}")
    claim_commands.add_parser("list", help="list the claims (the default)").set_defaults(func=_claims_list)
    cr = claim_commands.add_parser(
        "run", help="run claims and print their verdicts",
        description="Train every arm of the named claims (all if none) and decide each verdict.",
    )  # fmt: skip
    cr.add_argument("names", nargs="*", metavar="NAME",
                    help="claims to run (default: the tier-1 claims; see `rnnzoo claims`)")
    cr.add_argument("--all", action="store_true", help="with no NAME: every claim, tier-2 models' included")
    cr.add_argument("--quick", action="store_true", help="the quick budgets (about 30 min for all, 2 cores, one seed)")
    cr.add_argument("--seeds", type=_positive_int, default=1, metavar="N", help="seeds 0..N-1, best of seeds (default 1)")
    _add_jobs(cr)
    cr.add_argument("--threads", type=_positive_int, default=1, metavar="N", help="torch threads per run (default 1)")
    cr.add_argument("--out", metavar="DIR", help="results and run cache (default results/claims[-quick])")
    cr.add_argument("--force", action="store_true", help="rerun runs found in the cache")
    cr.add_argument("--quiet", action="store_true", help="no progress output, only the table")
    cr.set_defaults(func=_claims_run, error=cr.error)

    tr = commands.add_parser(
        "train",
        help="train a language model on real text (default data: the Python standard library's source)",
        description=(
            "Train a causal LM (SequenceModel around any mixer, or a pattern such as 'hawk,hawk,attention') on real "
            "text: evaluation in bits per byte, checkpoints, exact resume. Configuration: defaults, then --preset, "
            "then --config, then KEY=VALUE overrides (e.g. mixer=mamba steps=500 'mixer_kwargs={\"expand\": 1}')."
        ),
    )
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides (see TrainConfig)")
    tr.add_argument("--config", metavar="FILE", help="a TOML file of TrainConfig fields")
    tr.add_argument("--preset", metavar="NAME", help="a preset configuration: tiny (a first run, minutes on a CPU)")
    tr.add_argument("--out", default="runs/lm", metavar="DIR", help="run directory (default runs/lm)")
    tr.add_argument(
        "--resume", action="store_true",
        help="continue from the last checkpoint in --out, with its settings (KEY=VALUE may change steps and logging)",
    )  # fmt: skip
    tr.set_defaults(func=_train, error=tr.error)

    ev = commands.add_parser(
        "eval",
        help="bits per byte of trained LMs, and their loss against position beyond the training context",
        description="Evaluate checkpoints of `rnnzoo train`: bits per byte on a split, and the loss at each position "
        "of sequences --factor times the training context (length extrapolation), as a table and one plot.",
    )
    ev.add_argument("--checkpoint", action="append", required=True, metavar="DIR",
                    help="a run directory (its last checkpoint) or a checkpoint directory; repeatable")  # fmt: skip
    ev.add_argument("--data", metavar="SOURCE", help="corpus (default: each run's own)")
    ev.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    ev.add_argument("--factor", type=_positive_int, default=8, help="sequence length in training contexts (default 8)")
    ev.add_argument("--sequences", type=_positive_int, default=16, help="sequences for the loss by position (16)")
    ev.add_argument("--batches", type=_positive_int, default=16, help="batches for bits per byte (16)")
    ev.add_argument("--plot", default="loss_by_position.png", metavar="PATH", help="the plot (loss_by_position.png)")
    ev.set_defaults(func=_eval, error=ev.error)

    ge = commands.add_parser(
        "generate", help="continue a prompt with a trained LM, token by token from its recurrent state",
        description="Stream a continuation of --prompt from a checkpoint of `rnnzoo train`; report tokens/s.",
    )  # fmt: skip
    ge.add_argument("--checkpoint", required=True, metavar="DIR", help="a run directory or a checkpoint directory")
    ge.add_argument("--prompt", required=True)
    ge.add_argument("--max-new-tokens", type=_positive_int, default=200)
    ge.add_argument("--temperature", type=float, default=0.8)
    ge.add_argument("--top-k", type=_positive_int, default=None)
    ge.add_argument("--top-p", type=float, default=None)
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="decode with the compiled step (default: from 2,000 new tokens, for models without a KV cache)",
    )  # fmt: skip
    ge.set_defaults(func=_generate, error=ge.error)

    hf = commands.add_parser(
        "hf", help="convert runs to Hugging Face transformers models and back (pip install 'rnnzoo[hf]')",
        description="Convert between `rnnzoo train` runs and Hugging Face directories (rnnzoo.hf), weights bit for bit.",
    )  # fmt: skip
    hf_commands = hf.add_subparsers(dest="hf_command", required=True, metavar="{export,import}")
    hx = hf_commands.add_parser(
        "export", help="a run as a directory that AutoModelForCausalLM.from_pretrained loads (after import rnnzoo.hf)",
        description="Write a run's last checkpoint (or a checkpoint directory) with save_pretrained, and its tokenizer.",
    )  # fmt: skip
    hx.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run directory or one of its checkpoints")
    hx.add_argument("out", metavar="OUT_DIR", help="the Hugging Face directory to write (new or empty)")
    hx.set_defaults(func=_hf, error=hx.error)
    hi = hf_commands.add_parser(
        "import", help="a Hugging Face directory of an rnnzoo model as a run for eval and generate",
        description="Write a save_pretrained directory of an rnnzoo model as a run directory with one checkpoint.",
    )  # fmt: skip
    hi.add_argument("source", metavar="HF_DIR", help="a directory written by `rnnzoo hf export` or save_pretrained")
    hi.add_argument("out", metavar="OUT_RUN", help="the run directory to write (new or empty)")
    hi.set_defaults(func=_hf, error=hi.error)

    ls = commands.add_parser("list", help="print the model registry", description="Print the model registry.")
    ls.set_defaults(func=_list)

    sp = commands.add_parser(
        "speed",
        help="time forward and forward+backward of layers, the engines and baselines",
        description=(
            "Time forward-only and forward+backward of registered layers (each mode), the engines "
            f"'{speed.ENGINE}' (modes scan, recurrent) and '{speed.GLA}' (modes chunk, recurrent; "
            f"{speed.GLA_HEADS} heads of d / {speed.GLA_HEADS}) and the baselines {', '.join(speed.BASELINES)}, "
            "or (--step) layers' step after a context; compare rows side by side, print tables and write JSON."
        ),
    )
    sp.add_argument("--model", action="append", metavar="NAME", help="a target (repeatable): layer, engine or baseline")
    sp.add_argument("--mode", action="append", metavar="M", help="a mode (repeatable); default: every mode")
    sp.add_argument("--batch", type=_positive_int, help="B (default 8; 64 with --train-step)")
    sp.add_argument(
        "--length", type=_positive_int, help="T, the context with --step (default 1024; 40 with --train-step)"
    )
    sp.add_argument("--d-model", type=_positive_int, default=64, help="d (default 64)")
    sp.add_argument("--threads", type=_positive_int, help="torch threads (default 2; 1 with --train-step)")
    sp.add_argument("--dtype", choices=list(speed.DTYPES), default="float32", help="default float32")
    sp.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    sp.add_argument("--repeats", type=_positive_int, default=3, help="minimum timed calls per row (default 3)")
    sp.add_argument(
        "--budget", type=_seconds, default=0.3, help="minimum seconds of timed calls per row, fast rows repeat more"
    )
    sp.add_argument("--forward-only", action="store_true", help="skip forward+backward")
    sp.add_argument(
        "--step",
        action="store_true",
        help="time the --model layers' step, one token at a time, after a context of --length tokens (no_grad)",
    )
    sp.add_argument(
        "--train-step",
        action="store_true",
        help=(
            "time one training step (forward, loss, backward, AdamW) of a ~--params-parameter 2-block model around "
            "each --model (default: every tier-1 model) beside lstm's, at --batch 64 --length 40 unless given, one "
            "thread, round-robin; reports each model's ratio to lstm"
        ),
    )
    sp.add_argument(
        "--decode",
        action="store_true",
        help=(
            "greedy decoding of a ~1M-parameter 4-block LM around each --model (default: "
            f"{', '.join(decode_models())}) after a prompt of --length tokens (default 8192): eager step against "
            "the compiled step, interleaved rounds of 100 tokens, one thread; reports tokens/s, ratio, same tokens"
        ),
    )
    sp.add_argument("--params", type=_positive_int, help="--train-step / --decode model size (default 30000 / 1000000)")
    sp.add_argument("--rounds", type=_positive_int, help="--train-step / --decode timed rounds (default 15 / 5)")
    sp.add_argument("--json", default="speed.json", metavar="PATH", help="output file (default speed.json)")
    sp.add_argument(
        "--quick",
        action="store_true",
        help=(
            "preset suite in float32: the README's headline comparisons (engine scan, reference loop and cumsum at (8, 4096, 256) "
            "and (1, 65536, 64); mingru and nn.GRU at (8, 512, 256); gated_linear_attention chunk and reference "
            "loop at (4, 2048, 256) and a 2048² matmul) and every registered layer at "
            f"{speed.QUICK_LAYER_SHAPE} in each mode, then the step of every layer on engine 3 after "
            f"{' and '.join(map(str, speed.STEP_CONTEXTS))} tokens (batch 1, d 64); "
            "ignores --batch/--length/--d-model/--dtype"
        ),
    )
    sp.set_defaults(func=_speed, error=sp.error)

    ins = commands.add_parser(
        "inspect",
        help="plot a layer's implicit T×T operator M as heatmaps",
        description=(
            "Materialise the lower-triangular operator M (mixer output = M @ V, per head or channel) of a "
            "randomly initialised or saved layer for one random N(0, 1) input sequence, and plot chosen groups "
            "as heatmaps in a PNG."
        ),
    )
    ins.add_argument("model", metavar="MODEL", help="a registered model (see `rnnzoo list`)")
    ins.add_argument("--length", type=_positive_int, default=64, help="T (default 64)")
    ins.add_argument("--d-model", type=_positive_int, default=64, help="d (default 64)")
    ins.add_argument(
        "--group", type=int, action="append", metavar="G", help="a head or channel to plot (repeatable; default: 0-3)"
    )
    ins.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the input (default 0)")
    ins.add_argument(
        "--checkpoint", metavar="PATH", help="the layer's state_dict: a torch.save file or a .safetensors file"
    )
    ins.add_argument(
        "--kw", action="append", default=[], metavar="KEY=VALUE", help="model keyword (repeatable), a Python literal"
    )
    ins.add_argument("--log", action="store_true", help="plot log10 |M| instead of M")
    ins.add_argument("--out", metavar="PATH", help="output PNG (default operator_MODEL.png)")
    ins.set_defaults(func=_inspect, error=ins.error)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rnnzoo`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
