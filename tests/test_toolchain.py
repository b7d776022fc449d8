"""The extension imports libstdc++ rather than carrying a copy (unlearnx/_toolchain.py says why:
a copy broke every number-formatting error message, a segfault on one GPU host)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import unlearnx._C

from unlearnx._toolchain import private_libstdcxx, static_libstdcxx_error

needs_tools = pytest.mark.skipif(
    shutil.which("g++") is None or shutil.which("nm") is None, reason="needs g++ and nm (binutils)"
)

SOURCE = """
#include <sstream>
#include <string>
extern "C" const char* describe(long row) {
  static std::string out;
  std::ostringstream s;
  s << "row " << row;
  out = s.str();
  return out.c_str();
}
"""


def _library(tmp_path: Path, *flags: str) -> Path:
    src = tmp_path / "describe.cpp"
    src.write_text(SOURCE)
    lib = tmp_path / f"describe{len(flags)}.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", *flags, str(src), "-o", str(lib)], check=True)
    return lib


@needs_tools
def test_built_extension_imports_libstdcxx() -> None:
    assert private_libstdcxx(unlearnx._C.__file__) is False


@needs_tools
def test_static_libstdcxx_is_detected(tmp_path: Path) -> None:
    assert private_libstdcxx(_library(tmp_path)) is False
    assert private_libstdcxx(_library(tmp_path, "-static-libstdc++")) is True


def test_unreadable_library_is_unknown(tmp_path: Path) -> None:
    not_elf = tmp_path / "x.so"
    not_elf.write_text("not a library")
    assert private_libstdcxx(not_elf) is None


def test_error_names_library_link_command_and_fix() -> None:
    msg = static_libstdcxx_error("build/_C.so", "/opt/gcc/bin/g++ -shared")
    assert "build/_C.so" in msg and "/opt/gcc/bin/g++ -shared" in msg and "CC=gcc CXX=g++" in msg
