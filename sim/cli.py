"""The ``osqueue sim`` command: run the deterministic simulator for one seed or a range.

Without ``--scenario`` it runs the storage-level simulation (clients doing reads and CAS
writes on one faulty object store). With ``--scenario NAME`` it runs the queue-level
simulation of ``osqueue.sim.queue_cli`` (producers, workers and brokers). Options that
belong to only one mode are rejected in the other with exit code 2.

Exit codes: 0 when every check of every seed passed, 1 when any check failed (a predicate
violation, a history that is not linearizable, or an ``UNKNOWN`` verdict), 2 for invalid
options.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from osqueue.sim.faults import DEFAULT_FAULTS, MAX_TIMEOUT, FaultConfig
from osqueue.sim.workload import WorkloadConfig
from osqueue.spec.cas import TokenPolicy
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from osqueue.sim.runner import CheckOutcome, SimConfig, SimRun
    from osqueue.sim.sweep import SeedSummary

MAX_VIOLATIONS_SHOWN = 5
DEFAULT_WORKLOAD = WorkloadConfig()
DEFAULT_SEED = 1
# Kept equal to osqueue.sim.runner.DEFAULT_CHECK_TIMEOUT by a test, because importing the
# runner imports trio, which this module must not need at import time.
DEFAULT_CHECK_TIMEOUT = 60.0
# Kept equal to osqueue.sim.queue_sweep.DEFAULT_CHECK_TIMEOUT by a test. A queue run has two
# searches (queue and storage history), each bounded by this many wall seconds.
DEFAULT_QUEUE_CHECK_TIMEOUT = 30.0

# Options, by their Python parameter name, that only one mode uses.
STORAGE_ONLY_OPTIONS = {
    "clients": "--clients",
    "ops": "--ops",
    "keys": "--keys",
    "drop_request": "--drop-request",
    "drop_response": "--drop-response",
    "late": "--late",
    "error_rate": "--error-rate",
    "timeout": "--timeout",
    "rate_limit": "--rate-limit-per-second",
    "token_policy": "--token-policy",
    "reads_per_minute": "--reads-per-minute",
    "writes_per_minute": "--writes-per-minute",
}
QUEUE_ONLY_OPTIONS = {
    "schedule": "--schedule",
    "reference": "--reference",
    "shrink": "--shrink",
    "shrink_examples": "--shrink-examples",
}


def register(app: typer.Typer) -> None:
    """Add the ``sim`` command to the main ``osqueue`` app."""

    app.command("sim")(sim_command)


def sim_command(
    ctx: typer.Context,
    scenario: str | None = typer.Option(
        None, "--scenario",
        help="Run the queue-level simulation of this scenario: default, contention, failover, "
        "flaky-storage or turbopuffer (a variant such as contention/direct runs one mode "
        "only). Without it, the storage-level simulation runs.",
    ),
    seed: int | None = typer.Option(
        None, "--seed",
        help=f"Seed of one run, >= 0 (default {DEFAULT_SEED}); one seed gives one history.",
    ),
    seeds: str | None = typer.Option(
        None, "--seeds",
        help="Range of seeds A..B (both included, >= 0) to sweep; cannot be combined with --seed.",
    ),
    jobs: int = typer.Option(
        0, "--jobs", help="Processes for --seeds; 0 uses one per CPU.", min=0
    ),
    clients: int = typer.Option(
        DEFAULT_WORKLOAD.clients, "--clients", help="Concurrent clients.", min=1
    ),
    ops: int = typer.Option(
        DEFAULT_WORKLOAD.operations, "--ops", help="Store operations over all clients.", min=1
    ),
    keys: int = typer.Option(
        DEFAULT_WORKLOAD.keys, "--keys", help="Object keys the clients share.", min=1
    ),
    drop_request: float = typer.Option(
        DEFAULT_FAULTS.drop_request, "--drop-request",
        help="Probability that a write is lost before it is applied (client times out).",
    ),
    drop_response: float = typer.Option(
        DEFAULT_FAULTS.drop_response, "--drop-response",
        help="Probability that a write is applied but its response is lost.",
    ),
    late: float = typer.Option(
        DEFAULT_FAULTS.applied_late, "--late",
        help="Probability that a write takes effect only after the client timed out.",
    ),
    error_rate: float = typer.Option(
        DEFAULT_FAULTS.error_rate, "--error-rate",
        help="Probability that an operation gets a 500, 503 or 429 and is not applied.",
    ),
    timeout: float = typer.Option(
        DEFAULT_FAULTS.timeout, "--timeout",
        help=f"Client timeout in virtual seconds, > 0 and at most {MAX_TIMEOUT:g} (one day).",
    ),
    rate_limit: float = typer.Option(
        0.0, "--rate-limit-per-second",
        help="Writes per second allowed on one object (GCS allows about 1); 0 means no limit.",
    ),
    lying: bool = typer.Option(
        False, "--lying", help="The store ignores preconditions (negative control: checks must fail)."
    ),
    token_policy: str = typer.Option(
        "unique", "--token-policy", help="Version tokens: unique or content-hash."
    ),
    reads_per_minute: float | None = typer.Option(
        None, "--reads-per-minute",
        help="Throttle each client's reads to this many per minute (ThrottledStorageBackend).",
    ),
    writes_per_minute: float | None = typer.Option(
        None, "--writes-per-minute", help="Throttle each client's writes to this many per minute."
    ),
    check_timeout: float | None = typer.Option(
        None, "--check-timeout",
        help=f"Wall seconds for each linearizability search; when exceeded the verdict is "
        f"unknown, which fails the run. Default {DEFAULT_CHECK_TIMEOUT:g} for the storage "
        f"level, {DEFAULT_QUEUE_CHECK_TIMEOUT:g} with --scenario (two searches per run).",
    ),
    schedule: Annotated[Path | None, typer.Option(
        "--schedule",
        help="With --scenario: JSON fault schedule to run instead of the one the seed draws "
        "(written by --shrink or into the output directory of a failing seed).",
    )] = None,
    reference: Annotated[list[str] | None, typer.Option(
        "--reference",
        help="With --scenario: reproduce a known flaw of the TypeScript engine, reapply or "
        "reregister (repeatable). The run is then expected to fail.",
    )] = None,
    shrink: bool = typer.Option(
        False, "--shrink",
        help="With --scenario: for the first failing seed, let Hypothesis search for the "
        "smallest fault schedule that still fails, and write it to OUT/shrunk-schedule.json.",
    ),
    shrink_examples: int = typer.Option(
        100, "--shrink-examples", help="With --shrink: schedules Hypothesis may try."
    ),
    out: Annotated[Path | None, typer.Option(
        "--out",
        help="Storage level: directory for history.jsonl and report.html; with --seeds, "
        "failing seeds write to DIR/seed-N. With --scenario: directory for the files of "
        "failing seeds (histories, schedule, violations, HTML reports), written even when "
        "a single --seed run passes.",
    )] = None,
) -> None:
    """Simulate clients on a faulty object store (or the whole queue, with --scenario)."""

    console = Console()
    _require_trio()
    if scenario is not None:
        _reject_options(ctx, STORAGE_ONLY_OPTIONS, "belongs to the storage-level simulation",
                        "leave it out, or drop --scenario to run the storage level")
        from osqueue.sim.queue_cli import run_queue_simulation

        code = run_queue_simulation(
            scenario=scenario, seed=seed, seeds=seeds, jobs=jobs, schedule=schedule,
            reference=reference, lying=lying, shrink=shrink, shrink_examples=shrink_examples,
            check_timeout=DEFAULT_QUEUE_CHECK_TIMEOUT if check_timeout is None
            else check_timeout,
            out=out,
        )
        raise typer.Exit(code)

    _reject_options(ctx, QUEUE_ONLY_OPTIONS, "needs --scenario",
                    "add --scenario NAME to run the queue-level simulation")
    if check_timeout is None:
        check_timeout = DEFAULT_CHECK_TIMEOUT

    # Every option is checked before the first seed runs, so bad input exits with 2 and a
    # message naming the option, never with a crashed run or a sweep of crashed seeds.
    seed_range = _parse_seeds(seed, seeds)
    _check_fault_options(drop_request, drop_response, late, error_rate, timeout, rate_limit)
    _check_rate_option("--reads-per-minute", "reads", reads_per_minute)
    _check_rate_option("--writes-per-minute", "writes", writes_per_minute)
    _check_check_timeout(check_timeout)
    config = _build_config(
        seed_range.start, clients, ops, keys, drop_request, drop_response, late, error_rate,
        timeout, rate_limit, lying, token_policy, reads_per_minute, writes_per_minute,
    )

    if seeds is None:
        passed = _run_one(console, config, out, check_timeout)
    else:
        passed = _run_sweep(console, config, seed_range, jobs or os.cpu_count() or 1, out,
                            check_timeout)
    raise typer.Exit(0 if passed else 1)


def _reject_options(ctx: typer.Context, options: dict[str, str], reason: str,
                    fix: str) -> None:
    """Raise BadParameter for the first option of ``options`` given on the command line."""

    for name, flag in options.items():
        source = ctx.get_parameter_source(name)
        # Compared by name, because Typer may ship its own copy of Click's ParameterSource.
        if source is not None and source.name == "COMMANDLINE":
            raise typer.BadParameter(f"{flag} {reason}; {fix}", param_hint=flag)


def _require_trio() -> None:
    try:
        import trio  # noqa: F401
    except ImportError:
        raise typer.BadParameter(
            "osqueue sim needs trio, which is not installed; install the sim extra with "
            "pip install 'osqueue[sim]'"
        ) from None


def _parse_seeds(seed: int | None, seeds: str | None) -> range:
    """Return the seeds to run: ``--seeds`` when given, else the single ``--seed``."""

    if seed is not None and seeds is not None:
        raise typer.BadParameter(
            f"--seed {seed} and --seeds {seeds} cannot be combined; pass --seed N for one run "
            "or --seeds A..B for a sweep",
            param_hint="--seed",
        )
    if seeds is not None:
        from osqueue.sim.sweep import parse_seed_range

        try:
            return parse_seed_range(seeds)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--seeds") from None

    value = DEFAULT_SEED if seed is None else seed
    if value < 0:
        raise typer.BadParameter(
            f"must be >= 0, got {value}; a negative seed repeats the history of its "
            "absolute value",
            param_hint="--seed",
        )
    return range(value, value + 1)


def _check_fault_options(
    drop_request: float,
    drop_response: float,
    late: float,
    error_rate: float,
    timeout: float,
    rate_limit: float,
) -> None:
    """Raise BadParameter for a fault option that ``FaultConfig`` would reject."""

    probabilities = {
        "--drop-request": drop_request,
        "--drop-response": drop_response,
        "--late": late,
        "--error-rate": error_rate,
    }
    for option, value in probabilities.items():
        # Written so that NaN fails too.
        if not 0.0 <= value <= 1.0:
            raise typer.BadParameter(
                f"must be a probability between 0 and 1, got {value}", param_hint=option
            )
    if drop_request + drop_response + late > 1.0:
        raise typer.BadParameter(
            "one draw picks at most one write fault, so their probabilities must add up to at "
            f"most 1, got {drop_request} + {drop_response} + {late} = "
            f"{drop_request + drop_response + late:g}",
            param_hint=["--drop-request", "--drop-response", "--late"],
        )
    if not 0.0 < timeout <= MAX_TIMEOUT:
        raise typer.BadParameter(
            f"must be > 0 and at most {MAX_TIMEOUT:g} virtual seconds (one day), got {timeout}",
            param_hint="--timeout",
        )
    if not (math.isfinite(rate_limit) and rate_limit >= 0.0):
        raise typer.BadParameter(
            f"must be a finite number of writes per second >= 0 (0 means no limit), "
            f"got {rate_limit}",
            param_hint="--rate-limit-per-second",
        )


def _check_rate_option(option: str, unit: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0.0):
        raise typer.BadParameter(
            f"must be a finite number of {unit} per minute > 0, got {value}; leave the option "
            "out to run without a throttle",
            param_hint=option,
        )


def _check_check_timeout(value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise typer.BadParameter(
            f"must be a finite number of wall seconds > 0, got {value}",
            param_hint="--check-timeout",
        )


def _build_config(
    seed: int,
    clients: int,
    ops: int,
    keys: int,
    drop_request: float,
    drop_response: float,
    late: float,
    error_rate: float,
    timeout: float,
    rate_limit: float,
    lying: bool,
    token_policy: str,
    reads_per_minute: float | None,
    writes_per_minute: float | None,
) -> SimConfig:
    try:
        policy = TokenPolicy(token_policy)
    except ValueError:
        raise typer.BadParameter(
            f"unknown token policy {token_policy!r}; use unique or content-hash",
            param_hint="--token-policy",
        ) from None
    try:
        faults = FaultConfig(
            drop_request=drop_request,
            drop_response=drop_response,
            applied_late=late,
            error_rate=error_rate,
            timeout=timeout,
            write_rate_limit_per_second=rate_limit or None,
            lying=lying,
        )
        workload = WorkloadConfig(
            clients=clients,
            operations=ops,
            keys=keys,
            reads_per_minute=reads_per_minute,
            writes_per_minute=writes_per_minute,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    from osqueue.sim.runner import SimConfig

    try:
        return SimConfig(seed=seed, policy=policy, faults=faults, workload=workload)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _run_one(console: Console, config: SimConfig, out: Path | None, check_timeout: float) -> bool:
    from osqueue.sim.runner import check_run, simulate, write_outputs
    from osqueue.sim.sweep import replay_command

    run = simulate(config)
    started = time.perf_counter()
    outcome = check_run(run, timeout=check_timeout)
    check_seconds = time.perf_counter() - started
    written = write_outputs(run, outcome, out) if out is not None else []

    _print_run(console, run, outcome, check_seconds)
    for path in written:
        console.print(f"wrote {path}")
    if not outcome.passed:
        console.print(f"[bold red]FAILED[/] seed {config.seed}; replay with:")
        console.print(
            f"  {replay_command(config, str(out) if out else None, check_timeout)}",
            markup=False, soft_wrap=True,
        )
    else:
        console.print(f"[bold green]PASSED[/] seed {config.seed}")
    return outcome.passed


def _print_run(console: Console, run: SimRun, outcome: CheckOutcome, check_seconds: float) -> None:
    config = run.config
    outcomes: dict[str, int] = {}
    for operation in run.history:
        label = f"{operation.kind.value} {operation.outcome.value}"
        outcomes[label] = outcomes.get(label, 0) + 1

    table = Table(title=f"osqueue sim, seed {config.seed}", show_header=False)
    table.add_column("item")
    table.add_column("value")
    table.add_row("token policy", config.policy.value + (" (lying store)" if config.faults.lying
                                                         else ""))
    table.add_row("clients / keys", f"{config.workload.clients} / {config.workload.keys}")
    table.add_row("operations", f"{len(run.history)} in {run.virtual_duration:.1f} virtual s")
    table.add_row("by outcome", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    injected = [f"{kind}: {count}" for kind, count in run.faults_injected.items() if count]
    table.add_row("faults injected", ", ".join(injected) or "none")
    table.add_row("spec predicates", _predicate_text(outcome))
    table.add_row("linearizability", _verdict_text(outcome))
    table.add_row("wall time", f"simulate {run.wall_time:.2f} s, check {check_seconds:.2f} s")
    console.print(table)
    for violation in outcome.violations[:MAX_VIOLATIONS_SHOWN]:
        console.print(f"  {violation.guarantee}: {violation.message} (ops {violation.op_ids})",
                      markup=False)
    if len(outcome.violations) > MAX_VIOLATIONS_SHOWN:
        console.print(f"  ... and {len(outcome.violations) - MAX_VIOLATIONS_SHOWN} more")


def _predicate_text(outcome: CheckOutcome) -> str:
    if outcome.predicates_passed:
        return "[green]pass[/] (no violations)"
    guarantees = sorted({violation.guarantee for violation in outcome.violations})
    return f"[red]FAIL[/] {len(outcome.violations)} violations ({', '.join(guarantees)})"


def _verdict_text(outcome: CheckOutcome) -> str:
    if outcome.linearizability is None:
        return f"[red]{outcome.verdict}[/] ({outcome.linearizability_error})"
    color = "green" if outcome.linearizable else "red"
    return f"[{color}]{outcome.verdict}[/] in {outcome.linearizability.elapsed:.2f} s"


def _run_sweep(
    console: Console,
    config: SimConfig,
    seeds: range,
    jobs: int,
    out: Path | None,
    check_timeout: float,
) -> bool:
    from osqueue.sim.sweep import replay_command, sweep

    started = time.perf_counter()
    columns = (TextColumn("seeds"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=len(seeds), failed=0)
        failed = 0

        def on_done(summary: SeedSummary) -> None:
            nonlocal failed
            failed += 0 if summary.passed else 1
            progress.update(task, advance=1, failed=failed)

        summaries = sweep(config, seeds, jobs=jobs, out=out, check_timeout=check_timeout,
                          on_done=on_done)
    elapsed = time.perf_counter() - started

    operations = sum(summary.operations for summary in summaries)
    console.print(
        f"{len(summaries)} seeds, {operations} operations in {elapsed:.1f} s on {jobs} "
        f"processes ({len(summaries) / elapsed * 60:.0f} seeds per minute)"
    )
    faults: dict[str, int] = {}
    for summary in summaries:
        for kind, count in summary.faults_injected.items():
            faults[kind] = faults.get(kind, 0) + count
    injected = [f"{kind}: {count}" for kind, count in faults.items() if count]
    console.print(f"faults injected: {', '.join(injected) or 'none'}")
    failing = [summary for summary in summaries if not summary.passed]
    if not failing:
        console.print(f"[bold green]PASSED[/] all {len(summaries)} seeds")
        return True

    table = Table(title=f"{len(failing)} failing seeds")
    for column in ("seed", "violations", "linearizability", "first violation"):
        table.add_column(column, overflow="fold")
    for summary in failing:
        table.add_row(str(summary.seed), str(summary.violations), summary.verdict,
                      summary.first_violation or "")
    console.print(table)

    # Printed unwrapped, one per line, so each command can be copied whole.
    console.print("replay a failing seed with:")
    for summary in failing:
        seed_out = None if out is None else str(out / f"seed-{summary.seed}")
        command = replay_command(_with_seed(config, summary.seed), seed_out, check_timeout)
        console.print(f"  {command}", markup=False, soft_wrap=True)
    console.print(f"[bold red]FAILED[/] {len(failing)} of {len(summaries)} seeds")
    return False


def _with_seed(config: SimConfig, seed: int) -> SimConfig:
    return dataclasses.replace(config, seed=seed)
