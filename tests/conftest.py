"""Shared fixtures. Reference data lives in ../shared beside the repository (as in CI);
its absence is a failure, never a skip, so parity checks cannot silently stop running."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data not found at {path}: the tests expect the project's 'shared' "
                    f"folder beside the repository ({SHARED})", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    return _require(shared_dir / "testdata" / "reference")


@pytest.fixture(scope="session")
def videos_dir(shared_dir) -> Path:
    return _require(shared_dir / "testdata" / "videos")


@pytest.fixture(scope="session")
def bpe_vocab_path(shared_dir) -> Path:
    return _require(shared_dir / "clip" / "bpe_simple_vocab_16e6.txt.gz")


REAL_CLIPS = ("arm_wrestling.mp4", "eye_makeup.avi", "pool_cleaning.mp4")


@pytest.fixture(scope="session")
def clips(videos_dir) -> Path:
    """The folder of the three real clips, failing (not skipping) when any is missing."""
    missing = [n for n in REAL_CLIPS if not (videos_dir / n).is_file()]
    if missing:
        pytest.fail(f"real test clips missing: {missing} expected in {videos_dir} (the shared test data folder)",
                    pytrace=False)
    return videos_dir
