"""Small helpers shared by benchmarks: a fixed-width text table, a JSON writer, size parsing,
message buffers."""
import json
import sys
from pathlib import Path

import numpy

from hpclm.errors import UserError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def format_table(rows, columns):
    """rows: list of dicts; columns: list of keys or (key, format spec) pairs. Returns the text."""
    cols = [(c, "") if isinstance(c, str) else c for c in columns]
    cells = [[format(row.get(key, ""), spec) if row.get(key) is not None else "-" for key, spec in cols]
             for row in rows]
    widths = [max([len(key)] + [len(r[i]) for r in cells]) for i, (key, _) in enumerate(cols)]
    lines = ["  ".join(key.rjust(w) for (key, _), w in zip(cols, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def print_table(rows, columns, file=None):
    text = format_table(rows, columns)
    print(text, file=file or sys.stdout, flush=True)
    return text


def _plain(obj):
    if isinstance(obj, numpy.generic):
        return obj.item()
    if isinstance(obj, numpy.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_plain) + "\n")


def parse_size(text):
    """'4', '8K', '16M', '1G' -> bytes (binary units)."""
    body = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = body[-1] if body and body[-1] in _UNITS else ""
    digits = body[: len(body) - len(unit)]
    if not digits.isdigit():
        raise UserError(f"not a size: {text!r} (e.g. 4, 8K, 16M, 1G)")
    return int(digits) * _UNITS[unit]


def parse_sizes(text):
    """A comma list of sizes and 'lo:hi' ranges (powers of two from lo to hi) -> list of bytes:
    '4:64M', '4,8K,16M', '4,1K,64K:64M'."""
    out = []
    for item in (t for t in text.split(",") if t.strip()):
        if ":" in item:
            lo, hi = (parse_size(t) for t in item.split(":", 1))
            if lo <= 0:
                raise UserError(f"a size range starts above 0 bytes, not {item!r}")
            while lo <= hi:
                out.append(lo)
                lo *= 2
        else:
            out.append(parse_size(item))
    if not out:
        raise UserError(f"no sizes in {text!r}")
    return out


def zeros_of(nbytes, dtype="float32"):
    """A (max(nbytes // itemsize, 1),) array of zeros: a benchmark's message of about nbytes."""
    return numpy.zeros(max(nbytes // numpy.dtype(dtype).itemsize, 1), dtype=dtype)


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}"
        n /= 1024
