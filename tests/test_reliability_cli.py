"""CLI reliability (issue 14): every failure is one line `sbc: error: ...` and a non-zero exit,
nothing is half-written or replaced, signals and closed pipes end quietly, and an artifact can
be pinned by its sha256 before any of it is loaded.

Most checks run `sbc.cli.main` in-process; signals and pipes need a real process."""

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import sbc
from sbc.cli import main
from sbc.errors import ArtifactError, InputError
from sbc.runtimes import artifact as art
from sbc.runtimes.session import sample
from tests.runtimes.test_artifact import LIB, PARAMS, manifest_for

PARTIAL = ".sbc-partial-"


def cli(capsys, *args):
    """sbc.cli.main in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sbc: error: "), (code, err)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def stand_in(tmp_path):
    """An artifact with a stand-in library: inspect and the checks need no TVM."""
    path = tmp_path / "m.sbc"
    art.write_artifact(path, LIB, PARAMS, manifest_for(PARAMS))
    return path


@pytest.fixture
def mlp_artifact(tmp_path, mlp_module):
    path = tmp_path / "mlp.sbc"
    mlp_module.save(path)
    return path


@pytest.fixture
def no_replace(monkeypatch):
    """Guard for tests that aim at real devices: any os.replace (art.os is the os module, so
    every caller's) fails the test instead of replacing the device."""
    def refuse(src, dst):
        raise AssertionError(f"would have replaced {dst}")
    monkeypatch.setattr(art.os, "replace", refuse)


# -- 1. outputs onto FIFOs and devices are refused, never replaced ---------------------------------

def test_output_onto_fifo_is_refused(tmp_path, mlp_onnx, mlp_module, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = cli(capsys, "compile", mlp_onnx, "-o", fifo)
    assert_one_error_line(code, err, "fifo", "is a FIFO")
    with pytest.raises(InputError, match="is a FIFO"):
        mlp_module.save(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo"]  # no temp file left either


def test_output_onto_dev_null_is_refused(tmp_path, mlp_onnx, capsys, no_replace):
    code, _, err = cli(capsys, "calibrate", mlp_onnx, "--data", tmp_path / "x.npz",
                       "-o", "/dev/null")
    assert_one_error_line(code, err, "/dev/null", "is a device")
    with pytest.raises(InputError, match="is a device"):
        with art.atomic_path("/dev/null"):
            pass
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p for p in os.listdir("/dev") if p.startswith(PARTIAL)]


def test_export_onto_dev_null_is_refused(capsys, no_replace):
    code, _, err = cli(capsys, "export", "--config", "tiny", "-o", "/dev/null")
    assert_one_error_line(code, err, "is a device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_output_onto_directory_is_refused(tmp_path, mlp_onnx, capsys):
    (tmp_path / "out.sbc").mkdir()
    code, _, err = cli(capsys, "compile", mlp_onnx, "-o", tmp_path / "out.sbc")
    assert_one_error_line(code, err, "is a directory")


def test_output_onto_symlink_writes_through_it(tmp_path, mlp_onnx, capsys):
    """-o a symbolic link: the file it points to is replaced (atomically, as any output) and
    the link stays, as with a shell's `>`; a link to nothing yet creates its target."""
    (tmp_path / "releases").mkdir()
    old = tmp_path / "releases" / "mlp-v1.sbc"
    old.write_bytes(b"old artifact")
    (tmp_path / "mlp.sbc").symlink_to("releases/mlp-v1.sbc")
    (tmp_path / "next.sbc").symlink_to("releases/mlp-v2.sbc")
    for link in ("mlp.sbc", "next.sbc"):
        code, _, err = cli(capsys, "compile", mlp_onnx, "-o", tmp_path / link)
        assert code == 0, err
        assert (tmp_path / link).is_symlink() and zipfile.is_zipfile(tmp_path / link)
    assert sorted(os.listdir(tmp_path / "releases")) == ["mlp-v1.sbc", "mlp-v2.sbc"]
    assert sbc.load(old).run({"x": np.ones((2, 8), np.float32)})["y"].shape == (2, 4)


def test_output_onto_symlink_loop_is_refused(tmp_path, mlp_onnx, capsys):
    (tmp_path / "a.sbc").symlink_to("b.sbc")
    (tmp_path / "b.sbc").symlink_to("a.sbc")
    code, _, err = cli(capsys, "compile", mlp_onnx, "-o", tmp_path / "a.sbc")
    assert_one_error_line(code, err, "a.sbc", "loop of symbolic links")
    assert sorted(os.listdir(tmp_path)) == ["a.sbc", "b.sbc"]


# -- 2. SIGTERM / SIGHUP during the final write leave no partial file -----------------------------

CHILD = textwrap.dedent("""
    import json, sys, time
    import sbc.cli

    def slow_dump(obj, f, **kw):  # the output is being written when the signal comes
        f.write('{"partial": ')
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
    json.dump = slow_dump
    sys.exit(sbc.cli.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_during_write_leaves_nothing(tmp_path, mlp_onnx, signum):
    np.savez(tmp_path / "data.npz", x=np.ones((2, 8), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "calibrate", mlp_onnx, "--data",
                             tmp_path / "data.npz", "-o", out / "stats.json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the summary lines, then our marker
            if line.strip() == "writing":
                break
        assert [p for p in os.listdir(out) if p.startswith(PARTIAL)]  # caught mid-write
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert os.listdir(out) == []
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no partial output" in lines[0] and "Traceback" not in err


def test_signal_handlers_are_restored_after_main(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    cli(capsys, "inspect", tmp_path / "missing.sbc")
    assert signal.getsignal(signal.SIGTERM) is before


# -- 3. files are created with the umask's permissions, not 0600 ----------------------------------

@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_outputs_honour_the_umask(tmp_path, umask, mlp_artifact, tiny_module, capsys):
    expected = 0o666 & ~umask
    art.write_artifact(tmp_path / "a.sbc", LIB, PARAMS, manifest_for(PARAMS))
    np.savez(tmp_path / "in.npz", x=np.ones((2, 8), np.float32))
    code, _, err = cli(capsys, "run", mlp_artifact, "--inputs", tmp_path / "in.npz",
                       "--outputs", tmp_path / "out.npz")
    assert code == 0, err
    tiny_module.session().save_state(tmp_path / "state.npz")
    for name in ("a.sbc", "out.npz", "state.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, (name, oct(umask))


# -- 4. the manifest has a checksum of its own -----------------------------------------------------

def _edit_manifest(path, edit):
    """Rewrite manifest.json through zipfile (CRCs stay valid), keeping its old checksum."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members["manifest.json"])
    edit(manifest)
    members["manifest.json"] = json.dumps(manifest, indent=2).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _swap_first_offsets(manifest):
    a, b = manifest["weights"][0], manifest["weights"][1]
    a["offset"], b["offset"] = b["offset"], a["offset"]


def test_tampered_manifest_is_refused(stand_in, capsys):
    _edit_manifest(stand_in, _swap_first_offsets)
    with pytest.raises(ArtifactError) as info:
        art.read_artifact(stand_in)
    message = str(info.value)
    assert "\n" not in message and "checksum mismatch in manifest.json" in message
    code, _, err = cli(capsys, "inspect", stand_in)
    assert_one_error_line(code, err, "checksum mismatch in manifest.json")


def test_manifest_checksum_ignores_formatting_and_is_required(stand_in):
    _edit_manifest(stand_in, lambda m: None)  # re-indented only: still valid
    assert list(art.read_artifact(stand_in).params) == list(PARAMS)
    _edit_manifest(stand_in, lambda m: m.pop("manifest_sha256"))
    with pytest.raises(ArtifactError, match="lacks manifest_sha256"):
        art.read_artifact(stand_in)


def test_resealed_manifest_is_accepted(stand_in):
    """Tools (and tests) that rewrite a manifest on purpose re-seal it."""
    def edit(m):
        m.update(art.seal_manifest(dict(m, source={"name": "other.onnx", "sha256": None})))
    _edit_manifest(stand_in, edit)
    assert art.read_artifact(stand_in).manifest["source"]["name"] == "other.onnx"


# -- 5. corrupt session state files ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "npy", "missing", "foreign npz"])
def test_corrupt_state_file_is_one_input_error(tmp_path, tiny_module, kind):
    session = tiny_module.session()
    path = tmp_path / "state.npz"
    session.save_state(path)
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "npy":
        np.save(tmp_path / "state.npy", np.zeros(3))
        os.replace(tmp_path / "state.npy", path)
    elif kind == "missing":
        path.unlink()
    else:
        np.savez(path, x=np.zeros(3))
    with pytest.raises(InputError) as info:
        session.load_state(path)
    assert "\n" not in str(info.value) and "state.npz" in str(info.value)


# -- 6. --inputs formats ---------------------------------------------------------------------------

def test_npy_inputs_for_a_single_input_model(tmp_path, mlp_artifact, capsys):
    np.save(tmp_path / "x.npy", np.ones((3, 8), np.float32))
    code, out, err = cli(capsys, "run", mlp_artifact, "--inputs", tmp_path / "x.npy")
    assert code == 0 and "y: f32[3, 4]" in out, err


def test_npy_is_refused_for_several_inputs(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(InputError, match=r"2 inputs \(a, b\).*\.npz whose keys"):
        art.read_arrays(str(tmp_path / "x.npy"), "inputs", ["a", "b"])


@pytest.mark.parametrize("kind", ["text", "name=shape"])
def test_unaccepted_inputs_say_what_is_accepted(tmp_path, stand_in, kind, capsys):
    if kind == "text":
        given = tmp_path / "in.txt"
        given.write_text("1 2 3")
    else:
        given = "ids=1x16"  # (an --input spec given to --inputs)
    code, _, err = cli(capsys, "run", stand_in, "--inputs", given)
    assert_one_error_line(code, err, ".npz whose keys are the input names", ".npy")


# -- 7. sampling settings --------------------------------------------------------------------------

BAD_SAMPLING = [({"temperature": float("nan")}, "temperature"),
                ({"temperature": -1.0}, "temperature"),
                ({"temperature": float("inf")}, "temperature"),
                ({"top_k": 0}, "top_k"),
                ({"top_k": -3}, "top_k"),
                ({"max_new_tokens": -1}, "max_new_tokens")]


@pytest.mark.parametrize("kwargs, fragment", BAD_SAMPLING)
def test_bad_sampling_is_refused_by_the_api(tiny_module, kwargs, fragment):
    args = dict({"max_new_tokens": 2, "temperature": 0.5}, **kwargs)
    with pytest.raises(InputError, match=fragment):
        tiny_module.session().generate(np.array([[1, 2]]), **args)
    if "max_new_tokens" not in kwargs:
        with pytest.raises(InputError, match=fragment):
            sample(np.zeros((1, 4)), args["temperature"], args.get("top_k"),
                   np.random.default_rng(0))


def test_bad_chunk_is_refused(tiny_module):
    with pytest.raises(InputError, match="chunk"):
        tiny_module.session(chunk=0)


@pytest.mark.parametrize("flags, fragment", [(["--temperature", "nan"], "temperature"),
                                             (["--temperature", "-1"], "temperature"),
                                             (["--top-k", "0"], "top_k"),
                                             (["-n", "-1"], "max_new_tokens")])
def test_bad_sampling_is_refused_by_the_cli(stand_in, flags, fragment, capsys):
    code, _, err = cli(capsys, "generate", stand_in, "--prompt-ids", "1,2", *flags)
    assert_one_error_line(code, err, fragment)


# -- 8. a closed stdout ends quietly ---------------------------------------------------------------

@pytest.mark.parametrize("args", [["inspect", "{artifact}"], ["inspect", "{artifact}", "--json"],
                                  ["--help"]])
def test_closed_stdout_is_quiet(stand_in, args):
    """The reader closed its end before sbc wrote anything (as `| head` may)."""
    read, write = os.pipe()
    os.close(read)
    argv = [a.format(artifact=stand_in) for a in args]
    proc = subprocess.run([sys.executable, "-m", "sbc.cli", *argv], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["inspect", "--help"],
                                  ["inspect", "{artifact}"]])
def test_unwritable_stdout_is_one_line(stand_in, args):
    """A full disk is an error, also for what argparse prints (which it would ignore)."""
    argv = [a.format(artifact=stand_in) for a in args]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "sbc.cli", *argv], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert_one_error_line(proc.returncode, proc.stderr, "No space left on device")


def test_piped_to_head(tiny_onnx):
    """A real pipeline whose output is larger than head reads."""
    cmd = f"{sys.executable} -m sbc.cli inspect {tiny_onnx} --ir | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("model:")


# -- 9. --plots without matplotlib -----------------------------------------------------------------

def test_plots_without_matplotlib(tmp_path, monkeypatch, capsys):
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"version": 1, "steps": 3, "samples": 1, "sites": []}))
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    code, _, err = cli(capsys, "report", stats, "--plots", tmp_path / "plots")
    assert_one_error_line(code, err, "matplotlib", "pip install 'sbc[bench]'")


# -- 10. out-of-range token ids in calibrate and debug ---------------------------------------------

@pytest.fixture
def bad_ids(tmp_path):
    """ids with one entry past the tiny model's vocabulary (256)."""
    ids = np.arange(8, dtype=np.int64)[None]
    ids[0, 5] = 256 + 7
    np.savez(tmp_path / "ids.npz", ids=ids)
    return tmp_path / "ids.npz"


@pytest.mark.parametrize("command", ["calibrate", "debug"])
def test_out_of_range_ids_are_one_line(tmp_path, tiny_onnx, bad_ids, command, capsys):
    flag = "--data" if command == "calibrate" else "--inputs"
    extra = ["-o", tmp_path / "stats.json"] if command == "calibrate" else []
    code, _, err = cli(capsys, command, tiny_onnx, flag, bad_ids, *extra)
    assert_one_error_line(code, err, "263", "Gather")
    assert not (tmp_path / "stats.json").exists()


# -- 11. trust: sha256 pinning ---------------------------------------------------------------------

def test_inspect_prints_sha256_and_trust(stand_in, capsys):
    digest = hashlib.sha256(stand_in.read_bytes()).hexdigest()
    code, out, _ = cli(capsys, "inspect", stand_in)
    assert code == 0 and f"sha256: {digest}" in out.splitlines()
    assert [line for line in out.splitlines() if line.startswith("trust: ")
            and "code" in line and "--expect-sha256" in line]
    code, out, _ = cli(capsys, "inspect", stand_in, "--json")
    assert json.loads(out)["sha256"] == digest


def test_load_with_sha256(mlp_artifact):
    digest = hashlib.sha256(mlp_artifact.read_bytes()).hexdigest()
    assert sbc.load(mlp_artifact, sha256=digest.upper()).inputs[0][0] == "x"
    with pytest.raises(ArtifactError) as info:
        sbc.load(mlp_artifact, sha256="0" * 64)
    assert "\n" not in str(info.value) and f"sha256 is {digest}" in str(info.value)
    with pytest.raises(InputError, match="64 hexadecimal digits"):
        sbc.load(mlp_artifact, sha256="abc")


def test_sha256_is_checked_before_anything_is_read(tmp_path, monkeypatch, capsys):
    """A file that is not even a zip: the digest is what is refused, nothing was parsed."""
    path = tmp_path / "evil.sbc"
    path.write_bytes(b"not a zip at all")
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda *a, **k: opened.append(a))
    with pytest.raises(ArtifactError, match="sha256 is"):
        sbc.load(path, sha256="1" * 64)
    for command in (["run", path, "--inputs", "x.npz"], ["generate", path, "--prompt-ids", "1"]):
        code, _, err = cli(capsys, *command, "--expect-sha256", "1" * 64)
        assert_one_error_line(code, err, "sha256 is", "expected 1111")
    assert opened == []


def test_run_with_expected_sha256(tmp_path, mlp_artifact, capsys):
    digest = hashlib.sha256(mlp_artifact.read_bytes()).hexdigest()
    np.savez(tmp_path / "in.npz", x=np.ones((1, 8), np.float32))
    code, out, err = cli(capsys, "run", mlp_artifact, "--inputs", tmp_path / "in.npz",
                         "--expect-sha256", digest)
    assert code == 0 and "y: f32[1, 4]" in out, err
