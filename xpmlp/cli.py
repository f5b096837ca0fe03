"""What the command lines share: one-line usage errors with exit status 2, and argparse types that
name the value they expected."""

from __future__ import annotations

import argparse
import math

EXIT_USAGE = 2


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int, non_negative_int = int_at_least(1), int_at_least(0)


def number_above(minimum: float, *, inclusive: bool = False):
    """An argparse type: a finite float > ``minimum`` (>= with ``inclusive``)."""
    relation = ">=" if inclusive else ">"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected a finite number {relation} {minimum:g}, got {text}")
        return value

    parse.__name__ = f"number {relation} {minimum:g}"
    return parse


positive_number, non_negative_number = number_above(0), number_above(0, inclusive=True)


def parse_batch_sizes(text: str) -> list[int]:
    """``start:stop:step`` (stop included, like the seed's range) or a comma list: ``8,16,64``."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop, step = (*parts, 8)[:3] if len(parts) == 2 else parts
            if step < 1 or stop < start:
                raise ValueError
            sizes = list(range(start, stop + 1, step))
        else:
            sizes = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected start:stop:step (e.g. 8:64:8) or a comma list (e.g. 8,32,64), got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes
