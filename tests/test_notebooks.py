"""Execute every notebook in notebooks/ from a clean kernel, and test their helper module.

The notebooks run in memory with nbclient (their files are never rewritten) and with the
Agg backend, so no display is needed and no image is embedded. Each must finish without an
error and show a computed conclusion under its plots.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import matplotlib
import nbformat
import pytest
from nbclient import NotebookClient

matplotlib.use("Agg")

import matplotlib.pyplot as plt

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300
"""Seconds one cell may run; the slowest cell took about 30 s on a loaded 2-core machine."""

sys.path.insert(0, str(NOTEBOOKS))
import osqueue_notebooks as nb


def test_notebooks_present() -> None:
    names = {path.name for path in NOTEBOOK_FILES}
    assert {"contention.ipynb", "faults.ipynb", "cost.ipynb", "checker.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda path: path.name)
def test_notebook_saved_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} was saved with outputs"
            assert cell.execution_count is None, f"{path.name} cell {index} has a count"


PARAMETER_OVERRIDES = {
    # Unsorted lists, a missing default value and no zero fault rate: every conclusion must
    # pick its figures from the data, not from list positions or fixed values.
    "cost.ipynb": "RENEW_INTERVALS = [10.0, 2.0]\nTHROTTLES = [120.0, None]\n"
                  "IDLE_DURATION = 120.0\nBUSY_DURATION = 20.0\n",
    "contention.ipynb": "WRITERS = [4, 2]\nWRITE_LATENCIES = [0.2, 0.05]\nDURATION = 3.0\n"
                        "LIMITED_DURATION = 5.0\n",
    "faults.ipynb": "DROP_PROBABILITIES = [0.1, 0.02]\nDURATION = 5.0\n",
    "checker.ipynb": "OPERATIONS = [200, 100]\nCLIENTS = [3, 2]\nPARTITION_KEYS = [3, 1]\n"
                     "PARTITION_OPERATIONS = 200\nREPEAT = 1\n",
}
"""Parameter cells that ``test_notebook_with_changed_parameters`` runs after each notebook's own."""


def execute_notebook(path: Path, override: str | None = None) -> list[str]:
    """Execute ``path`` in memory and return the Markdown conclusions it displayed.

    ``override`` is run as a new cell right after the notebook's parameters cell.
    """

    notebook = nbformat.read(path, as_version=4)
    if override is not None:
        index = next(index for index, cell in enumerate(notebook.cells)
                     if cell.cell_type == "code" and "# Parameters" in cell.source)
        notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(override))
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()

    conclusions = [
        "".join(output["data"]["text/markdown"])
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "text/markdown" in output.get("data", {})
    ]
    plots = sum("nb.check_axes(figure)" in cell.source for cell in notebook.cells)
    assert plots >= 1, f"{path.name} draws no checked plot"
    assert len(conclusions) >= plots, f"{path.name}: {plots} plots, {len(conclusions)} conclusions"
    for text in conclusions:
        assert text.startswith("**Conclusion:**"), text
        assert not re.search(r"\bnan\b", text), f"{path.name} states an unmeasured figure: {text}"
    return conclusions


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda path: path.name)
def test_notebook_executes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits the environment: Agg draws without a display and embeds nothing.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    execute_notebook(path)
    assert os.environ["MPLBACKEND"] == "Agg"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PARAMETER_OVERRIDES))
def test_notebook_with_changed_parameters(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    conclusions = execute_notebook(NOTEBOOKS / name, PARAMETER_OVERRIDES[name])
    assert conclusions


def test_run_is_deterministic() -> None:
    config = nb.RunConfig(mode="client-batch", writers=2, requests_per_writer=2, duration=3.0,
                          seed=5)
    first = nb.run(config).row()
    second = nb.run(config).row()
    first.pop("wall_s")
    second.pop("wall_s")
    assert first == second


def test_broker_commit_rate_follows_latency() -> None:
    store = nb.StoreSettings(write_latency=0.2, sigma=0.0)
    result = nb.run(nb.RunConfig(mode="broker", writers=4, duration=10.0, store=store))
    assert result.stats.conflicts == 0
    assert 4.0 <= result.commits_per_second <= 5.0
    assert result.throughput > 4 * result.commits_per_second


def test_direct_writers_conflict() -> None:
    result = nb.run(nb.RunConfig(mode="direct", writers=4, requests_per_writer=2,
                                 duration=5.0))
    assert result.stats.conflicts > 0
    assert result.conflict_rate > 0.2


@pytest.mark.parametrize(
    ("policy", "duplicates", "lost"),
    [("settle", False, False), ("reapply", True, False), ("assume-applied", False, True)],
)
def test_unknown_outcome_policies(policy: str, duplicates: bool, lost: bool) -> None:
    store = nb.StoreSettings(drop_request=0.1, drop_response=0.1)
    result = nb.run(nb.RunConfig(mode="client-batch", policy=policy, workload="enqueue",
                                 writers=2, requests_per_writer=4, duration=20.0, store=store))
    assert result.stats.indeterminate > 0
    assert (result.duplicates > 0) is duplicates
    assert (result.lost > 0) is lost


def test_broker_exactly_once_under_drops() -> None:
    store = nb.StoreSettings(drop_request=0.1, drop_response=0.1)
    result = nb.run(nb.RunConfig(mode="broker", workload="enqueue", writers=2, duration=20.0,
                                 store=store))
    assert result.stats.indeterminate > 0
    assert result.duplicates == 0
    assert result.lost == 0


def test_run_config_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        nb.RunConfig(mode="sharded")


def test_check_axes_requires_units() -> None:
    figure, axis = plt.subplots()
    axis.plot([1, 2], [3, 4])
    axis.set_title("panel")
    axis.set_xlabel("writers")
    axis.set_ylabel("throughput (per second)")
    with pytest.raises(ValueError, match="unit in brackets"):
        nb.check_axes(figure)
    axis.set_xlabel("writers (count)")
    nb.check_axes(figure)
    plt.close(figure)


def test_checker_timing_partitions_by_key() -> None:
    split = nb.checker_timing(clients=3, operations=200, keys=3, repeat=1, seed=2)
    whole = nb.checker_timing(clients=3, operations=200, keys=3, repeat=1, partition=False,
                              seed=2)
    assert split["parts"] == 3
    assert whole["parts"] == 1
    assert split["verdict"] == whole["verdict"] == "linearizable"
