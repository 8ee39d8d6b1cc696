"""Progress bars with a time estimate (tqdm) on stderr for the long stages: training, evaluation, the optimum's
planning and the comparison.

A bar is drawn only when ``show`` is true: `show_progress` gives the default (stderr is a terminal and
``--quiet`` was not passed). Nothing is ever written to stdout, so ``--json`` still prints exactly one JSON
object there.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm.auto import tqdm

__all__ = ["TrainBar", "counter", "show_progress"]


def show_progress(quiet: bool = False) -> bool:
    """True when progress bars should be drawn: not ``quiet`` and stderr is a terminal."""
    return not quiet and bool(getattr(sys.stderr, "isatty", lambda: False)())


def counter(desc: str, show: bool, unit: str = "it") -> Callable[[int, int], None]:
    """A ``callback(done, total)`` (the evaluation's and the planner's progress hook) drawing one bar that
    closes itself when ``done == total``; a no-op when ``show`` is false."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if not show:
            return
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.refresh()  # draw the final count even when it came within tqdm's refresh interval
            bar.close()

    return update


#: (metrics column, format) shown after the training bar when the method reports the column
_FIELDS = (
    ("cost", "cost {:.4g}"),
    ("violation_share", "viol {:.2%}"),
    ("worst_violation_pu", "worst {:.4f}"),
    ("battery_undelivered_kwh", "bat {:.3g} kWh"),
    ("heatpump_comfort_k_steps", "hp {:.3g} K-steps"),
    ("generator_undelivered_kwh", "gen {:.3g} kWh"),
    ("approx_kl", "kl {:.3g}"),
    ("pf_failures", "pf fail {}"),
)


class TrainBar:
    """Training progress: a bar over iterations (iteration budget) or over seconds of the wall-time budget,
    with the last iteration's metrics (and the last validation evaluation) after it. Called with every metrics row of
    `gridedge_run.loop.train`."""

    def __init__(self, desc: str, iterations: int | None, minutes: float | None, show: bool):
        self.by_time = iterations is None and minutes is not None
        total = round(60.0 * minutes) if self.by_time else iterations
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="s" if self.by_time else "it",
            file=sys.stderr,
            disable=not show,
            dynamic_ncols=True,
            bar_format=None
            if not self.by_time
            else "{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]",
        )

    def __call__(self, row: dict) -> None:
        if self.bar.disable:
            return
        parts = [fmt.format(row[key]) for key, fmt in _FIELDS if row.get(key, "") != ""]
        if row.get("eval_cost", "") != "":
            parts.append(f"val cost {row['eval_cost']:.4g} viol {row['eval_violation_share']:.2%}")
        self.bar.set_postfix_str(" | ".join(parts), refresh=False)
        done = min(row["wall_s"], self.bar.total) if self.by_time else row["iteration"]
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()
