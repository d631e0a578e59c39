"""Packaging: light import, version, console script."""

import subprocess
import sys

import atrous


def test_import_is_numpy_only():
    code = ("import sys, atrous; heavy = [m for m in ('torch', 'matplotlib', 'tqdm', 'mnist1d') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import atrous pulled in: {out.stdout.strip()}"


def test_public_api_names():
    for name in ("conv", "conv_transpose", "conv_grad", "geometry"):
        assert name in atrous.__all__ and hasattr(atrous, name)


def test_cli_version_and_help():
    out = subprocess.run([sys.executable, "-m", "atrous", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"atrous {atrous.__version__}"
    out = subprocess.run([sys.executable, "-m", "atrous", "--help"], capture_output=True,
                         text=True, check=True)
    assert "usage: atrous" in out.stdout


def test_lint_clean():
    """The lint step of the test command: ruff (configured in pyproject.toml) over the whole tree."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        import ruff  # noqa: F401  (installed by the dev extra)
    except ImportError:
        raise AssertionError("ruff is needed for the lint step: pip install -e '.[dev]'") from None
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "benchmarks"],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dependencies_point_downward():
    """Nothing under analysis/, nn/, compare/ imports the command-line front end (DESIGN.md): they
    raise ``atrous._errors.CLIError``; ``cli.py`` imports them, never the reverse."""
    import ast
    import pathlib

    root = pathlib.Path(atrous.__file__).parent
    bad = []
    for sub in ("analysis", "nn", "compare"):
        for path in sorted((root / sub).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] + [a.name for a in node.names]
                    if (node.level and node.module == "cli") or node.module == "atrous.cli" or (
                            node.level == 2 and not node.module and "cli" in names):
                        bad.append(f"{path.relative_to(root)}:{node.lineno}")
                elif isinstance(node, ast.Import) and any(a.name == "atrous.cli" for a in node.names):
                    bad.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not bad, f"upward imports of atrous.cli: {bad}"


def test_engine_ab_benchmark_runs_and_refuses_unknown_settings():
    # benchmarks/engine_ab.py backs the README's A/B numbers: a tiny run prints one line per pass
    # with every variant, and a misspelt setting is an error, not a silently default variant
    import os
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "engine_ab.py")
    shape = '("tiny", 1, 2, 2, (8, 8), 3, 2, "same", 1)'
    out = subprocess.run([sys.executable, script, "--repeat", "1", "--threads", "1", "--shape", shape,
                          "a:", "b:_FORCE_MODE='crop'"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("tiny")]
    assert len(lines) == 2 and all(" a " in ln and " b " in ln for ln in lines), out.stdout
    bad = subprocess.run([sys.executable, script, "--shape", shape, "x:_FORCE_MOD='crop'"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "_FORCE_MOD" in bad.stdout + bad.stderr
