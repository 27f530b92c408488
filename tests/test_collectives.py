"""pystematic's own collectives (gathers, broadcast, reduce, barrier) in a real 2-rank
gloo group started through the elastic launcher."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

import _dist_helpers
from pystematic.launch import LaunchSpec, launch


@pytest.mark.slow
def test_collectives_give_every_rank_the_values_and_keep_their_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    spec = LaunchSpec(nproc_per_node=2, use_gpus=False, run_id="c", log_dir=tmp_path / "logs")

    result = launch(spec, _dist_helpers.collectives_rank, ())

    assert sorted(result) == [0, 1]
    for out in result.values():
        assert out["gathered"] == ["a", list(range(1000))]
        assert out["shared"] == {"from": 0}
        assert out["total"] == 3.0
        # Each call's works stay referenced here (freed by this thread, not gloo's), up to
        # the last 8 calls: a gather and a broadcast are two collectives each.
        assert out["kept"] == [2, 4, 5, 6, 7, 8, 8, 8, 8, 8, 8, 8, 8]
