"""atrous._io: every output file is written atomically with the permissions open() would give
(0o666 minus the umask for a new file, the old mode for an existing one); an interrupted write
leaves the old file and no temporary; the CLI's JSON and PNG, compare's results and figures use it."""

import json
import os
import stat

import pytest

from atrous import _io


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_new_files_get_open_s_permissions(tmp_path, umask):
    assert _io.current_umask() == umask
    _io.write_text(tmp_path / "a.txt", "x")
    _io.write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    _io.write_json(tmp_path / "c.json", {"a": [1, 2]}, indent=1)
    with open(tmp_path / "ref.txt", "w") as f:                      # the oracle: plain open()
        f.write("x")
    want = mode_of(tmp_path / "ref.txt")
    assert want == 0o666 & ~umask
    for p in ("a.txt", "sub/b.bin", "c.json"):
        assert mode_of(tmp_path / p) == want, p
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2]}


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_existing_file_keeps_its_mode(tmp_path, mode):
    p = tmp_path / "keep.txt"
    p.write_text("old")
    os.chmod(p, mode)
    _io.write_text(p, "new")
    assert p.read_text() == "new" and mode_of(p) == mode


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, exc):
    p = tmp_path / "results.jsonl"
    _io.write_text(p, "old\n")
    with pytest.raises(exc):
        with _io.atomic_write(p) as f:
            f.write("half a rec")
            raise exc
    assert p.read_text() == "old\n" and os.listdir(tmp_path) == ["results.jsonl"]
    with pytest.raises(exc):
        with _io.atomic_write(tmp_path / "new.bin", "wb") as f:
            f.write(b"xx")
            raise exc
    assert os.listdir(tmp_path) == ["results.jsonl"]                # no partial new file either


def test_unserialisable_json_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        _io.write_json(tmp_path / "x.json", {"a": object()})
    assert os.listdir(tmp_path) == []


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with _io.atomic_write("x", "a"):
            pass


def test_atrous_show_writes_json_and_png_with_the_same_normal_mode(tmp_path, umask, capsys):
    pytest.importorskip("matplotlib")
    from atrous.cli import main
    out = tmp_path / "fig.png"
    assert main(["show", "--layers", "k3d1,k3d2", "--out", str(out)]) == 0
    want = 0o666 & ~umask
    assert mode_of(out) == want and mode_of(tmp_path / "fig.json") == want
    assert sorted(os.listdir(tmp_path)) == ["fig.json", "fig.png"]


def test_compare_results_and_figures_use_the_helper(tmp_path, umask):
    pytest.importorskip("matplotlib")
    from atrous import plot
    from atrous.compare import runner as R
    R.append_records(tmp_path / "results.jsonl", [{"key": "a", "v": 1}])
    assert mode_of(tmp_path / "results.jsonl") == 0o666 & ~umask
    rows = [{"strategy": "dilated", "params": 10, "macs": 100, "mean": 0.5, "std": 0.1, "metric_name": "accuracy"}]
    plot.compare_accuracy(rows, str(tmp_path / "acc.png"))
    assert mode_of(tmp_path / "acc.png") == 0o666 & ~umask
    with open(tmp_path / "acc.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
