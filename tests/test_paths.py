"""The shared folder and the default data: $AMC_DATA, $AMC_SHARED, ../shared from the current
directory, the source tree's last; one clear error naming the variables when none exists."""

import pytest

import amc.paths as paths
from amc.errors import AmcError


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No variable set, a current directory with no ../shared, no source-tree shared folder."""
    work = tmp_path / "home" / "checkout"
    work.mkdir(parents=True)
    monkeypatch.delenv("AMC_SHARED", raising=False)
    monkeypatch.delenv("AMC_DATA", raising=False)
    monkeypatch.chdir(work)
    monkeypatch.setattr(paths, "_SOURCE_SHARED", tmp_path / "site-packages" / "shared")
    return work


def make_shared(root):
    archive = root / "datasets" / "cifar10-jpeg.tar.xz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")
    return archive


def test_none_found_is_one_error_naming_the_variables(nowhere):
    assert paths.find_shared() is None
    with pytest.raises(AmcError, match=r"\$AMC_DATA.*\$AMC_SHARED"):
        paths.default_data()


def test_shared_beside_the_current_directory(nowhere):
    archive = make_shared(nowhere.parent / "shared")
    assert paths.find_shared() == nowhere.parent / "shared"
    assert paths.default_data() == archive
    assert paths.shared_path("models") == nowhere.parent / "shared" / "models"


def test_amc_shared_wins_over_the_current_directory(nowhere, tmp_path, monkeypatch):
    make_shared(nowhere.parent / "shared")
    archive = make_shared(tmp_path / "elsewhere")
    monkeypatch.setenv("AMC_SHARED", str(tmp_path / "elsewhere"))
    assert paths.default_data() == archive


def test_amc_data_wins_and_must_exist(nowhere, tmp_path, monkeypatch):
    make_shared(nowhere.parent / "shared")
    data = tmp_path / "mine"
    data.mkdir()
    monkeypatch.setenv("AMC_DATA", str(data))
    assert paths.default_data() == data
    monkeypatch.setenv("AMC_DATA", str(tmp_path / "missing"))
    with pytest.raises(AmcError, match=r"\$AMC_DATA .*does not exist"):
        paths.default_data()


def test_a_missing_amc_shared_is_an_error(nowhere, tmp_path, monkeypatch):
    monkeypatch.setenv("AMC_SHARED", str(tmp_path / "missing"))
    with pytest.raises(AmcError, match=r"\$AMC_SHARED"):
        paths.find_shared()


def test_source_tree_is_the_last_resort(nowhere, tmp_path, monkeypatch):
    archive = make_shared(tmp_path / "site-packages" / "shared")
    assert paths.default_data() == archive


def test_service_defaults_follow(nowhere, tmp_path, monkeypatch):
    from amc.service.config import ServiceConfig

    monkeypatch.setenv("AMC_SHARED", str(tmp_path / "home"))  # exists; holds no data: paths still named
    cfg = ServiceConfig()
    assert cfg.checkpoints == tmp_path / "home" / "models"
    assert cfg.datasets == {"cifar10": tmp_path / "home" / "datasets" / "cifar10-jpeg.tar.xz"}
