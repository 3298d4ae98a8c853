"""What every ``rlhf`` command line shares: one-line argument errors and checked number types."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other error of ours (``rlhf -h`` shows usage)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def number(kind, low: float, inclusive: bool = True):
    """An argparse type: a finite number ≥ ``low`` (> ``low`` when not ``inclusive``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {'≥' if inclusive else '>'} {low:g}")
        return value
    return parse


POSITIVE_INT, COUNT, NON_NEGATIVE = number(int, 1), number(int, 0), number(float, 0.0)


def PORT(text: str) -> int:  # noqa: N802 (an argparse type, named like the others)
    port = COUNT(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535)")
    return port
