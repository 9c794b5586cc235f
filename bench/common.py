"""Small helpers every benchmark uses: timing, the machine line, table printing, JSON output."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from shared.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
EPFL = ROOT.parent / "shared" / "data" / "epfl_ca1_subset"


def shown(path: str | os.PathLike) -> str:
    """A path as published in docs/: relative to the checkout, the shared data beside it as
    ../shared/..., anything else as <scratch>/NAME (this machine's folders mean nothing to a reader)."""
    p = Path(path).resolve()
    for base, prefix in ((ROOT, ""), (ROOT.parent / "shared", "../shared/")):
        if p.is_relative_to(base):
            return prefix + str(p.relative_to(base))
    return f"<scratch>/{p.name}"


def shown_command(module: str, argv: list[str]) -> str:
    """The command line with every absolute path argument shown as `shown` shows it."""
    return " ".join(["python -m", module, *(shown(a) if a.startswith("/") else a for a in argv)])


def machine() -> dict[str, str | int]:
    """The CPU model, its widest matrix instruction set (one model name covers EPYCs with and without
    avx512, 2x apart in a segmenter cell), cores, Python, date."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    isa = widest_isa(set(fields.get("flags", "").split()))
    return {"cpu": fields.get("model name", "unknown"), "isa": isa,
            "cores": os.cpu_count() or 0, "python": platform.python_version(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def widest_isa(flags: set[str]) -> str:
    """amx, avx512_bf16, avx512, avx2 or other: what sets a CPU's training speed here."""
    for isa, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"),
                      ("avx2", "avx2")):
        if flag in flags:
            return isa
    return "other"


def rate(fn: Callable[[], int], min_seconds: float = 2.0, warmup: int = 1) -> float:
    """Items per second of fn() (which returns the number of items it processed)."""
    for _ in range(warmup):
        fn()
    items, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        items += fn()
    return items / elapsed


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"machine": machine(), **payload})  # a killed bench keeps the old results
    print(f"\nwrote {path}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)
