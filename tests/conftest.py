"""Shared fixtures: the real LIDC data when it is present, and one tiny training run for the whole session.

Helper functions (volume makers, writers, the tiny cohort) live in helpers.py; import them from there, never from
conftest.py or from a test module."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import BASE, tree_state, write_cohort

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data from the repository root; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real LIDC-IDRI test data) is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> SimpleNamespace:
    """The tiny synthetic cohort of `helpers.write_cohort` (16 patients, 22 nodules), written once per session.

    `manifest` and its folder `data` must not be changed by any test (a test that needs another manifest writes
    it into its own tmp_path). `cache` is the view cache the session's runs share: every run that names it
    with the default view settings only reads it once it holds the cohort's 22 nodules."""
    root = tmp_path_factory.mktemp("tiny-cohort")
    manifest = write_cohort(root / "data")
    return SimpleNamespace(manifest=manifest, data=manifest.parent, cache=root / "cache")


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort, tmp_path_factory):
    """One tiny run (`helpers.BASE`: the `tiny` backbone, 2 folds of 2 epochs) on `tiny_cohort`, trained once for
    the session and shared by test_train_run, test_predict and test_evaluate_cli: a `RunResult` (`.run` is the
    folder, `.config`, `.metrics`, `.summary`).

    Read it, never write into it: a test that changes a run (deletes a file, resumes it with other options)
    works on a copy (`shutil.copytree(tiny_run.run, tmp_path / "run")`). At the end of the session this fixture
    fails if any file of the run or of the cohort was added, removed or rewritten."""
    from noduleclip.train import TrainConfig, train_run

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    result = train_run(tiny_cohort.manifest, run, TrainConfig(**BASE, cache=str(tiny_cohort.cache)))
    before = {"run": tree_state(run), "cohort": tree_state(tiny_cohort.data)}
    yield result
    after = {"run": tree_state(run), "cohort": tree_state(tiny_cohort.data)}
    for name in before:
        changed = sorted(set(before[name].items()) ^ set(after[name].items()))
        assert not changed, f"a test modified the shared tiny {name} ({changed[0][0]}); copy it with shutil.copytree " \
                            "before changing it"


@pytest.fixture
def backbone_registry():
    """The backbone registry (name -> BackboneConfig) for a test that registers backbones of its own (directly or
    with `register_backbone`): whatever the test adds or removes is undone when it ends, pass or fail."""
    from noduleclip.model.backbones import BACKBONES

    saved = dict(BACKBONES)
    try:
        yield BACKBONES
    finally:
        BACKBONES.clear()
        BACKBONES.update(saved)


@pytest.fixture(autouse=True)
def no_leaked_backbones():
    """Fails the test that leaves a backbone registered beyond the package's own (the BackboneConfig constants of
    noduleclip.model.backbones), so that no test sees what an earlier one registered: use `backbone_registry`."""
    yield
    module = sys.modules.get("noduleclip.model.backbones")
    if module is None:  # nothing imported the registry, so nothing registered
        return
    own = {value.name for value in vars(module).values() if isinstance(value, module.BackboneConfig)}
    leaked = sorted(set(module.BACKBONES) - own)
    for name in leaked:  # removed, so that the next test starts clean whatever this one did
        del module.BACKBONES[name]
    assert not leaked, f"this test left backbone(s) {leaked} registered; register them through the " \
                       "`backbone_registry` fixture"
