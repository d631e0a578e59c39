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
