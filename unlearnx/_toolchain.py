"""Checks on how ``unlearnx._C`` was linked. Standard library only: ``setup.py`` loads this file
by path, before the package (which needs the extension) can be imported.

Why: torch uses the shared libstdc++. An extension linked with a static copy of it (a compiler
whose driver adds ``-static-libstdc++``, as one GPU host's ``/opt/gcc`` did) carries a second
``std::locale`` whose facets the first never registered, so every ``TORCH_CHECK`` message that
formats a number breaks: a segmentation fault there (an H200 host, torch 2.11, under cuda-gdb:
``std::ostream::_M_insert<long>`` inside ``_C.so``), a message cut short at the number here
(gcc 12, torch 2.13).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# std::locale's own members: only libstdc++'s locale objects define them, never a header.
_LOCALE_PREFIX = "_ZNSt6locale"
_DEFINED = set("TtWwVvRrDdBb")


def private_libstdcxx(library: str | Path) -> bool | None:
    """Whether the shared ``library`` defines libstdc++'s ``std::locale`` itself (a static copy
    linked in) rather than importing it; None where ``nm`` is missing or cannot read it."""
    nm = shutil.which("nm")
    if nm is None:
        return None
    proc = subprocess.run([nm, str(library)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in _DEFINED and parts[2].startswith(_LOCALE_PREFIX):
            return True
    return False


def static_libstdcxx_error(library: str | Path, link_command: str) -> str:
    """The build error for a ``library`` that :func:`private_libstdcxx` flagged."""
    return (
        f"{library} was linked with its own static copy of libstdc++ (linked by: {link_command}; "
        "a -static-libstdc++ there, in LDFLAGS or in the compiler's own defaults does it). torch "
        "uses the shared one, and with two copies every error message that prints a number "
        "crashes the process or comes out truncated. Build with a compiler that links libstdc++ "
        "dynamically, for example: CC=gcc CXX=g++ python setup.py build_ext --inplace"
    )
