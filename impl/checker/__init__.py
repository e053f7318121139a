"""Linearizability checker for histories of concurrent operations.

Build a list of ``Operation`` (or parse a file with ``parse_history_file``), pick a model
(``cas_register_model``, ``kv_model``, ``object_store_model``) and call
``check_operations``. The verdict is three-valued: ``Verdict.UNKNOWN`` means the time or
step budget ran out, and it is never a pass. ``render_html`` draws the history with the
longest linearization found and the operations that break it.
"""

from osqueue.checker.models import cas_register_model, kv_model, partition_by_key
from osqueue.checker.parsers import (
    FORMATS,
    MODELS,
    HistoryFormatError,
    ParsedHistory,
    detect_format,
    parse_history_file,
    parse_history_text,
)
from osqueue.checker.report import render_html, summarize
from osqueue.checker.search import check_operations
from osqueue.checker.store import (
    PendingToken,
    check_store_history,
    object_store_model,
    operations_from_store_history,
)
from osqueue.checker.types import (
    UNKNOWN,
    CheckResult,
    Model,
    Operation,
    PartitionResult,
    Verdict,
)

__all__ = [
    "FORMATS",
    "MODELS",
    "UNKNOWN",
    "CheckResult",
    "HistoryFormatError",
    "Model",
    "Operation",
    "ParsedHistory",
    "PartitionResult",
    "PendingToken",
    "Verdict",
    "cas_register_model",
    "check_operations",
    "check_store_history",
    "detect_format",
    "kv_model",
    "object_store_model",
    "operations_from_store_history",
    "parse_history_file",
    "parse_history_text",
    "partition_by_key",
    "render_html",
    "summarize",
]
