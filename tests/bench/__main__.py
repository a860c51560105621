"""Run the benchmarks and write docs/benchmarks.md.

python -m tests.bench            # all of them
python -m tests.bench trainer    # only modules whose name contains "trainer"
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "docs" / "benchmarks.md"


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"
    )


def main(argv: list[str]) -> int:
    wanted = argv[1:]
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if wanted:
        names = [n for n in names if any(w in n for w in wanted)]
    sections: list[str] = []
    failed = 0
    for name in names:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"tests.bench.{name}")
            section = module.run()
        except Exception:  # a broken benchmark is reported, the others still run
            failed += 1
            section = f"## {name}\n\nFailed:\n\n```\n{traceback.format_exc()}```\n"
        print(section, flush=True)
        print(f"   ({time.monotonic() - started:.1f}s)", flush=True)
        sections.append(section.strip() + "\n")
    dated = [f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on {_machine()}."]
    OUTPUT.parent.mkdir(exist_ok=True)
    if wanted and OUTPUT.exists():
        # Partial run: replace only the sections that ran, keep the others and the date
        # they were written, and say what ran since.
        previous = OUTPUT.read_text()
        dated = [line for line in previous.split("\n\n")[1].splitlines()
                 if _still_dates(line, names)]  # fmt: skip
        dated.append(
            f"Rerun since, on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python -m "
            f"tests.bench {' '.join(wanted)}`: {', '.join(names)}."
        )
        kept = _split(previous)
        for section in sections:
            kept[section.splitlines()[0]] = section
        sections = list(kept.values())
    header = (
        "# Benchmarks\n\n" + "\n".join(dated) + "\n"
        "Every figure is compared with a baseline measured in the same run; the machine is "
        "shared and noisy, so read ratios and medians, not single timings.\n\n"
    )
    OUTPUT.write_text(header + "\n".join(sections))
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 1 if failed else 0


def _still_dates(line: str, rerun: list[str]) -> bool:
    """Whether a date line of the file still holds after `rerun` ran: the first write does,
    an earlier rerun only if some of its sections did not run again."""
    if line.startswith("Written by"):
        return True
    if not line.startswith("Rerun since"):
        return False
    return not set(line.rstrip(".").split(": ")[-1].split(", ")) <= set(rerun)


def _split(text: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            if current and current[0].startswith("## "):
                parts[current[0].rstrip("\n")] = "".join(current).strip() + "\n"
            current = [line]
        else:
            current.append(line)
    if current and current[0].startswith("## "):
        parts[current[0].rstrip("\n")] = "".join(current).strip() + "\n"
    return parts


if __name__ == "__main__":
    sys.exit(main(sys.argv))
