"""The one progress display of long work: training, generation, searches, the teacher cache."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, *, with_info: bool = False, transient: bool = False) -> Progress:
    """A rich ``Progress``: description, bar, done/total, time elapsed and remaining.

    ``with_info`` adds a last column showing each task's ``info`` field (losses, say: pass
    ``info=""`` to ``add_task`` and update it). ``transient`` clears the bar when done; a
    disabled bar (``enabled=False``, e.g. on ranks other than 0) shows nothing.
    """
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    if with_info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, disable=not enabled, transient=transient)
