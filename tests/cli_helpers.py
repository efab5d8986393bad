"""Running ``unet-fast`` in-process from tests."""

from __future__ import annotations

from unet_fast.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``unet-fast ARGV --no-progress``."""
    code = main([*map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def segment_error(capsys, *argv) -> str:
    """The one stderr line of a ``unet-fast`` command that must fail with exit code 2."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unet-fast segment: error: "), err
    assert "Traceback" not in err
    return lines[0]
