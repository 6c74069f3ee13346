"""``--shard auto``: which shard this machine runs, from the environment of a Kubernetes
Indexed Job (``JOB_COMPLETION_INDEX``, 0-based, and ``JOB_COMPLETIONS``).

A CI matrix passes ``--shard I/N`` itself; an Indexed Job of N completions gives each pod
its index, so every pod runs the same command: ``orchestrate upgrade --all --shard auto``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from orchestrator.errors import SelectionError

INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
COUNT_VARIABLE = "JOB_COMPLETIONS"


def auto_shard(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(I, N) with I numbered from 1, as ``--shard I/N`` gives it."""
    environ = os.environ if environ is None else environ
    missing = [name for name in (INDEX_VARIABLE, COUNT_VARIABLE) if not environ.get(name, "").strip()]
    if missing:
        raise SelectionError(
            f"--shard auto reads {INDEX_VARIABLE} and {COUNT_VARIABLE} (a Kubernetes Indexed Job sets them); "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set",
            hint=f"run it in an Indexed Job (completionMode: Indexed; pass {COUNT_VARIABLE} from spec.completions), "
            "or give --shard I/N",
        )
    index_text, count_text = environ[INDEX_VARIABLE].strip(), environ[COUNT_VARIABLE].strip()
    if not (index_text.isdigit() and count_text.isdigit()) or not 0 <= int(index_text) < int(count_text):
        raise SelectionError(
            f"--shard auto: {INDEX_VARIABLE}={index_text[:40]!r} and {COUNT_VARIABLE}={count_text[:40]!r} "
            f"must be whole numbers with 0 <= {INDEX_VARIABLE} < {COUNT_VARIABLE}",
            hint=f"{INDEX_VARIABLE} is 0-based, as Kubernetes sets it",
        )
    return int(index_text) + 1, int(count_text)
