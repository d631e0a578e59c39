"""`atrous rf --model pkg.mod:Name`: a class, a factory or an instance; --help says it runs that code;
the current directory comes after installed packages (a local file cannot shadow an installed one);
user-code failures are one-line errors."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from atrous.cli import main

pytest.importorskip("torch")

NETS = textwrap.dedent("""
    import torch.nn as nn

    class Net(nn.Module):                       # a class: built with no arguments
        def __init__(self, width=4):
            super().__init__()
            self.body = nn.Sequential(nn.Conv1d(1, width, 3, dilation=2), nn.ReLU(), nn.Conv1d(width, 1, 3))

        def forward(self, x):
            return self.body(x)

    def make():                                 # a factory
        return Net(2)

    net = Net(3)                                # an instance
    not_a_model = 42

    def returns_int():
        return 7

    class NeedsArgs(nn.Module):
        def __init__(self, depth):
            super().__init__()
""")


@pytest.fixture
def nets_dir(tmp_path, monkeypatch):
    (tmp_path / "clinets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("clinets", None)


@pytest.mark.parametrize("name", ["Net", "make", "net"])
def test_class_factory_and_instance(nets_dir, capsys, name):
    assert main(["rf", "--model", f"clinets:{name}", "--input-shape", "1,1,20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["receptive_field"]["size"] == [7]                 # 1 + 2*2 + 2*1
    assert str(nets_dir) not in sys.path                          # the search path is restored


@pytest.mark.parametrize("name,msg", [
    ("not_a_model", "clinets:not_a_model is a int, not a torch.nn.Module, a class or a factory"),
    ("returns_int", r"clinets:returns_int\(\) returned int, not a torch.nn.Module"),
    ("NeedsArgs", r"calling clinets:NeedsArgs\(\) raised TypeError: .*depth"),
    ("Nte", "has no 'Nte' \\(did you mean 'Net'\\?\\)"),
])
def test_bad_model_names_are_one_line_errors(nets_dir, capsys, name, msg):
    import re
    assert main(["rf", "--model", f"clinets:{name}", "--input-shape", "1,1,20"]) != 0
    err = capsys.readouterr().err.strip()
    assert re.search(msg, err) and "\n" not in err and "Traceback" not in err


def test_broken_module_and_bad_spec(tmp_path, monkeypatch, capsys):
    (tmp_path / "brokennet.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["rf", "--model", "brokennet:make", "--input-shape", "1,1,20"]) != 0
    assert "importing 'brokennet' raised RuntimeError: boom at import" in capsys.readouterr().err
    assert main(["rf", "--model", "a:b:c", "--input-shape", "1,1,20"]) != 0
    assert "--model must look like package.module:Name" in capsys.readouterr().err


def test_help_says_it_imports_and_runs_the_code(capsys):
    with pytest.raises(SystemExit):
        main(["rf", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "imports and runs that code" in out and "after installed packages" in out


@pytest.mark.parametrize("launcher", ["script", "-m"])
def test_local_file_does_not_shadow_an_installed_package(tmp_path, launcher):
    """A local scipy.py next to the user's model file must not replace the installed scipy, whether
    atrous runs as a console script or as `python -m atrous` (which puts the cwd first)."""
    pytest.importorskip("scipy")
    work = tmp_path / "work"
    work.mkdir()
    (work / "scipy.py").write_text("raise RuntimeError('the local scipy.py shadowed the installed scipy')\n")
    (work / "shadownet.py").write_text("import scipy.special\nimport torch.nn as nn\n\n\ndef make():\n"
                                       "    return nn.Conv1d(1, 1, 3, dilation=int(scipy.special.comb(2, 1)))\n")
    runner = tmp_path / "bin" / "atrous_runner.py"                 # like the console script: not in cwd
    runner.parent.mkdir()
    runner.write_text("import sys\nfrom atrous.cli import main\nsys.exit(main())\n")
    cmd = [sys.executable, str(runner)] if launcher == "script" else [sys.executable, "-m", "atrous"]
    out = subprocess.run(cmd + ["rf", "--model", "shadownet:make", "--input-shape", "1,1,16", "--json"],
                         cwd=work, capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["receptive_field"]["size"] == [5]
