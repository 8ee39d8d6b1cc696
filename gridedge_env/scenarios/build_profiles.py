"""Derive the shipped household load profiles from the 1-minute source profiles.

The source is the folder of 100 one-day household load profiles of the IEEE PES European Low Voltage Test
Feeder (`load_profile_1.txt` ... `load_profile_100.txt`, one kW value per minute, 1,440 lines each), as
distributed in the DSS-Extensions test-case collection (BSD licence). gridedge does not ship those files:
it ships `data/household_profiles_30min.csv`, 100 rows of 48 half-hour mean values in kW, written by this
module::

    python -m gridedge_env.scenarios.build_profiles --source ../shared/data/household_profiles_1min

(run from the repository root; `--output` defaults to the file inside the package). The output does not
depend on where the source folder lives, so a fresh derivation is byte-identical to the shipped file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gridedge_env.scenarios.households import N_PROFILES, PROFILES_FILENAME, SHIPPED_STEP_MINUTES

SOURCE_MINUTES = 1_440
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "data" / PROFILES_FILENAME
DECIMALS = 6

_LICENCE = """\
Copyright (c) 2018-2024, DSS-Extensions contributors
Copyright (c) 2008-2024, Electric Power Research Institute, Inc.
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:
    * Redistributions of source code must retain the above copyright
      notice, this list of conditions and the following disclaimer.
    * Redistributions in binary form must reproduce the above copyright
      notice, this list of conditions and the following disclaimer in the
      documentation and/or other materials provided with the distribution.
    * Neither the name of the Electric Power Research Institute, Inc., nor
      the names of its contributors may be used to endorse or promote
      products derived from this software without specific prior written
      permission.

THIS SOFTWARE IS PROVIDED BY Electric Power Research Institute, Inc., "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL Electric Power Research Institute, Inc., OR ANY OTHER
ENTITY CONTRIBUTING TO OR INVOLVED IN THE PROVISION OF THE SOFTWARE, BE
LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR
CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS
INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN
CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE)
ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE
POSSIBILITY OF SUCH DAMAGE."""

_HEADER = f"""\
gridedge household load profiles: {N_PROFILES} one-day profiles x 48 half-hour mean values, in kW.
Row k (profile = k) is derived from load_profile_<k>.txt of the IEEE PES European Low Voltage Test Feeder
(1-minute kW, 1,440 values per day), as distributed in the DSS-Extensions test-case collection
(dss-extensions/electricdss-tst, Version8/Distrib/IEEETestCases/, LVTestCase/Daily_1min_100profiles/).
Derivation: column tHHMM = mean of the 30 one-minute values starting at HH:MM, rounded to {DECIMALS} decimals.
Command: python -m gridedge_env.scenarios.build_profiles --source ../shared/data/household_profiles_1min
Licence of the source data (BSD), retained as its conditions require:
{_LICENCE}"""


def read_source_profiles(source: Path | str) -> np.ndarray:
    """Read the 1-minute source profiles.

    Args:
        source: folder holding `load_profile_1.txt` ... `load_profile_100.txt`.

    Returns:
        Array [100, 1440] of kW, row k-1 from `load_profile_<k>.txt`.

    Raises:
        FileNotFoundError: the folder or one of the files is missing.
        ValueError: a file does not hold exactly 1,440 finite non-negative values.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"household profile source folder {str(source)!r} does not exist")
    rows = []
    for k in range(1, N_PROFILES + 1):
        path = source / f"load_profile_{k}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"household profile file {str(path)!r} is missing")
        values = np.loadtxt(path, dtype=np.float64, ndmin=1)
        if values.shape != (SOURCE_MINUTES,):
            raise ValueError(f"{str(path)!r} holds {values.size} values, expected {SOURCE_MINUTES} (one per minute)")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"{str(path)!r} holds non-finite or negative kW values")
        rows.append(values)
    return np.stack(rows)


def derive_profiles(kw_1min: np.ndarray, step_minutes: int = SHIPPED_STEP_MINUTES) -> np.ndarray:
    """Mean over each step of 1-minute profiles.

    Args:
        kw_1min: [P, 1440] kW, one value per minute.
        step_minutes: step length; must divide 1,440.

    Returns:
        [P, 1440 // step_minutes] step-mean kW.
    """
    if SOURCE_MINUTES % step_minutes:
        raise ValueError(f"step_minutes={step_minutes} does not divide {SOURCE_MINUTES}")
    n_profiles = kw_1min.shape[0]
    return kw_1min.reshape(n_profiles, SOURCE_MINUTES // step_minutes, step_minutes).mean(axis=-1)


def step_column_names(step_minutes: int = SHIPPED_STEP_MINUTES) -> list[str]:
    """Column names `tHHMM`, the local start time of each step."""
    starts = range(0, SOURCE_MINUTES, step_minutes)
    return [f"t{m // 60:02d}{m % 60:02d}" for m in starts]


def format_profiles_csv(kw: np.ndarray) -> str:
    """The shipped file's text: provenance header (`#` lines), a column header, one row per profile.

    Args:
        kw: [P, 48] half-hour mean kW.
    """
    lines = [f"# {line}".rstrip() for line in _HEADER.splitlines()]
    lines.append(",".join(["profile", *step_column_names()]))
    for k, row in enumerate(kw, start=1):
        lines.append(",".join([str(k), *(f"{v:.{DECIMALS}f}" for v in row)]))
    return "\n".join(lines) + "\n"


def build_profiles_text(source: Path | str) -> str:
    """Read the source folder and return the text of the shipped file."""
    return format_profiles_csv(derive_profiles(read_source_profiles(source)))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m gridedge_env.scenarios.build_profiles",
        description="Derive gridedge's half-hourly household profiles from the 1-minute IEEE European LV "
        "test feeder profiles.",
    )
    parser.add_argument(
        "--source", required=True, type=Path, help="folder with load_profile_1.txt ... load_profile_100.txt"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="CSV file to write")
    args = parser.parse_args(argv)
    text = build_profiles_text(args.source)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {N_PROFILES} profiles x {SOURCE_MINUTES // SHIPPED_STEP_MINUTES} steps to {args.output}")


if __name__ == "__main__":
    main()
