"""The compile cache (sbc.cache): a repeated compile is answered from the cache, anything that
changes the result misses, a damaged entry is compiled again, and it can be turned off."""

import shutil

import numpy as np
import pytest

import sbc
from sbc.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory, turned on (the test session turns it off)."""
    return cache_on(tmp_path, monkeypatch)


def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SBC_NO_CACHE", "0")
    monkeypatch.setenv("SBC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def no_build(monkeypatch):
    """From here on, compiling for real fails the test."""
    import sbc.codegen.build
    monkeypatch.setattr(sbc.codegen.build, "build", lambda *a, **kw: pytest.fail("compiled again"))


def feeds():
    return {"x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)}


def test_a_second_compile_comes_from_the_cache(cache, mlp_onnx, tmp_path, monkeypatch):
    first = sbc.compile(mlp_onnx)
    assert not first.from_cache and len(list(cache.glob("*.sbc"))) == 1
    copy = shutil.copy(mlp_onnx, tmp_path / "renamed.onnx")  # same bytes, another name
    no_build(monkeypatch)
    again = sbc.compile(copy)
    assert again.from_cache and again.manifest["source"]["name"] == "renamed.onnx"
    np.testing.assert_array_equal(again.run(feeds())["y"], first.run(feeds())["y"])


def test_what_changes_the_result_misses(cache, mlp_onnx, tmp_path):
    sbc.compile(mlp_onnx)
    assert not sbc.compile(mlp_onnx, passes="dce").from_cache  # another pipeline
    import onnx
    model = onnx.load(mlp_onnx)
    model.graph.initializer[0].float_data[:] = [1.0] * 32  # other weights: other bytes
    onnx.save(model, tmp_path / "other.onnx")
    assert not sbc.compile(tmp_path / "other.onnx").from_cache
    assert len(list(cache.glob("*.sbc"))) == 3


def test_a_damaged_entry_is_compiled_again(cache, mlp_onnx):
    sbc.compile(mlp_onnx)
    (entry,) = cache.glob("*.sbc")
    entry.write_bytes(entry.read_bytes()[:100])
    module = sbc.compile(mlp_onnx)
    assert not module.from_cache and module.run(feeds())["y"].shape == (2, 4)
    assert sbc.compile(mlp_onnx).from_cache  # and the entry was written afresh


def test_off_switches(cache, mlp_onnx, tmp_path, capsys, monkeypatch):
    sbc.compile(mlp_onnx)
    assert not sbc.compile(mlp_onnx, cache=False).from_cache
    assert not sbc.compile(mlp_onnx, time_passes=True).from_cache  # debugging: passes must run
    assert main(["compile", mlp_onnx, "-o", str(tmp_path / "a.sbc"), "--no-cache"]) == 0
    assert "compile cache" not in capsys.readouterr().out
    assert main(["compile", mlp_onnx, "-o", str(tmp_path / "b.sbc")]) == 0
    assert "(from the compile cache)" in capsys.readouterr().out
    assert sbc.load(tmp_path / "b.sbc").run(feeds())["y"].shape == (2, 4)
    monkeypatch.setenv("SBC_NO_CACHE", "1")
    assert not sbc.compile(mlp_onnx).from_cache


def test_graphs_are_not_cached(cache, mlp_onnx):
    from sbc.frontend import import_onnx
    graph = import_onnx(mlp_onnx)
    assert not sbc.compile(graph).from_cache and not sbc.compile(graph).from_cache
    assert not list(cache.glob("*.sbc"))


def test_the_cache_keeps_to_its_size(cache, mlp_onnx, monkeypatch):
    monkeypatch.setenv("SBC_CACHE_MAX_MB", "0")  # every entry is over: nothing is kept
    sbc.compile(mlp_onnx)
    assert not list(cache.glob("*.sbc"))


def test_a_checkpoint_folder_is_cached_by_its_files(cache, tmp_path, monkeypatch):
    """A checkpoint folder's key hashes every file in it: the same folder (copied) hits; an
    edited config misses; the window convention is part of the key."""
    from tests.frontend.checkpoints import Tiny, write_checkpoint
    folder = write_checkpoint(tmp_path / "ckpt", Tiny(layers=2))
    first = sbc.compile(folder)
    copy = shutil.copytree(folder, tmp_path / "copy")
    no_build(monkeypatch)
    assert sbc.compile(copy).from_cache
    monkeypatch.undo()  # compiling for real again (and the cache env set anew)
    cache_on(tmp_path, monkeypatch)
    assert not sbc.compile(copy, window="cache").from_cache
    with open(copy / "config.json", "a") as f:
        f.write("\n")  # the same config in other bytes: compiled again, never guessed
    again = sbc.compile(copy)
    assert not again.from_cache
    assert again.manifest["source"]["sha256"] != first.manifest["source"]["sha256"]
