"""Fixtures of the graph fuzzer: its mode (from the --fuzz-* options in tests/conftest.py),
the worker process that runs cases, and the recorder of outcomes."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fuzz.check import Worker
from tests.fuzz.recorder import Recorder, format_summary


@dataclass
class FuzzConfig:
    examples: int | None  # None: CI mode (fixed examples); else long mode
    seed: int | None
    shrink: bool

    @property
    def long(self) -> bool:
        return self.examples is not None


@pytest.fixture(scope="session")
def fuzz_config(request) -> FuzzConfig:
    opt = request.config.getoption
    examples, seed = opt("--fuzz-examples"), opt("--fuzz-seed")
    if examples is not None and seed is None:
        seed = random.randrange(2**32)
    return FuzzConfig(examples, seed, opt("--fuzz-shrink"))


@pytest.fixture(scope="session")
def fuzz_worker():
    worker = Worker()
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def fuzz_recorder(request, fuzz_config, tmp_path_factory):
    path = request.config.getoption("--fuzz-record") or \
        tmp_path_factory.mktemp("fuzz") / "outcomes.json"
    recorder = Recorder(Path(path), fuzz_config.seed, "long" if fuzz_config.long else "ci")
    request.config._fuzz_recorder = recorder  # for the terminal summary below
    yield recorder
    recorder.write()


def pytest_terminal_summary(terminalreporter, config):
    recorder = getattr(config, "_fuzz_recorder", None)
    if recorder is not None and sum(recorder.counts.values()):
        terminalreporter.write_sep("-", "graph fuzzer")
        terminalreporter.write_line(format_summary(recorder.summary()))
        terminalreporter.write_line(f"  (outcomes in {recorder.path})")
