"""The one argparse parser class every dcpo-* command uses: bad arguments give one line and exit 2.

argparse's default prints the whole usage block before the error; our commands report their own input
errors in one line (exit 2), so argparse's are made to look the same.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["OneLineErrorParser"]


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        tool = self.prog.split()[0]  # "dcpo-convert import" -> "dcpo-convert", as the other errors say
        print(f"{tool}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
