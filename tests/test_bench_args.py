"""The benchmark refuses counts that would silently measure nothing."""

from __future__ import annotations

import pytest

from bench.run import parse_args


@pytest.mark.parametrize("flag", ["--warm-runs", "--rounds", "--devpid-workers"])
def test_counts_below_one_are_refused(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args([flag, "-2"])
    assert exc.value.code == 2
    assert f"{flag} must be 1 or more" in capsys.readouterr().err


def test_defaults_pass() -> None:
    args = parse_args([])
    assert (args.rounds, args.warm_runs, args.devpid_workers) == (3, 3, 1)
