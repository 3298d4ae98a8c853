import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def preset_cache(tmp_path_factory):
    """Presets are materialised into a per-session cache unless RLHF_CACHE is set already."""
    if "RLHF_CACHE" not in os.environ:
        os.environ["RLHF_CACHE"] = str(tmp_path_factory.mktemp("rlhf-cache"))
    yield Path(os.environ["RLHF_CACHE"])


@pytest.fixture(scope="session")
def tiny_path(preset_cache):
    from rlhf.models.presets import resolve_model_path

    return resolve_model_path("tiny")


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data file {path} is not present")
    return path


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each test's Accelerator gets the mixed precision it asks for: accelerate keeps one per process
    (and module fixtures, such as a whole pipeline run, create theirs before the test starts)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.fixture
def poisoned_sft_loss(monkeypatch):
    """SFT's loss made NaN at the calls numbered in ``calls["nan_at"]`` (set by the test); ``calls["n"]``
    counts the calls (reset it between runs)."""
    import rlhf.train.sft as sft

    calls, real = {"n": 0, "nan_at": set()}, sft.sft_loss

    def poisoned(model, batch):
        calls["n"] += 1
        loss = real(model, batch)
        return loss * float("nan") if calls["n"] in calls["nan_at"] else loss

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    return calls
