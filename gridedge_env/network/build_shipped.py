"""Regenerate the shipped feeder files: `python -m gridedge_env.network.build_shipped --data ../shared/data`."""

from __future__ import annotations

import argparse
from pathlib import Path

from gridedge_env.network.shipped import DATA_DIR, SHIPPED_FEEDERS, import_shipped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate gridedge's shipped feeder files from OpenDSS models.")
    parser.add_argument("--data", required=True, help="folder with the OpenDSS test cases (../shared/data)")
    parser.add_argument("--out", default=str(DATA_DIR), help="output folder (default: the package's data/)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FEEDERS:
        feeder = import_shipped(name, args.data)
        path = out / SHIPPED_FEEDERS[name].file_name(name)
        feeder.save(path)
        print(
            f"{name}: {len(feeder.buses)} buses, {len(feeder.lines)} lines, {len(feeder.transformers)} "
            f"transformers, {len(feeder.loads)} loads -> {path}"
        )


if __name__ == "__main__":
    main()
