"""Configuration: conf/ and params.yaml agree, every option builds, typos are errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from rasters import REPO

from ilots.core.errors import IlotsError
from ilots.pipeline.config import compose, load_params, write_params


def test_committed_params_yaml_agrees_with_conf() -> None:
    composed = OmegaConf.to_container(compose(root=REPO))
    committed = OmegaConf.to_container(OmegaConf.load(REPO / "params.yaml"))
    assert composed == committed, "params.yaml is stale: run `make params` and commit it"


@pytest.mark.parametrize("model", sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")))
def test_every_model_option_builds_for_rgb_and_rgbnir(model: str) -> None:
    import torch

    cfg = compose([f"model={model}"], root=REPO)
    for bands in (3, 4):
        net = instantiate({**OmegaConf.to_container(cfg.model), "in_channels": bands, "classes": 4}).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, bands, 64, 64)).shape == (1, 4, 64, 64)


@pytest.mark.parametrize("group", ["loss", "optimizer", "scheduler", "trainer", "experiment"])
def test_every_option_of_every_group_composes_and_instantiates(group: str) -> None:
    import torch

    for option in sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")):
        cfg = compose([f"{group}={option}"], root=REPO)
        if group == "loss":
            loss = instantiate(cfg.loss)
            target = torch.full((1, 8, 8), 255)
            target[0, 0, 0] = 1
            assert torch.isfinite(loss(torch.randn(1, 4, 8, 8), target))
        elif group == "optimizer":
            assert isinstance(
                instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer
            )
        elif group == "scheduler" and cfg.scheduler:
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
            steps = {"total_steps": 10} if "total_steps" in cfg.scheduler else {}  # filled in by train
            opt.step()
            instantiate(cfg.scheduler, **steps)(opt).step()


def test_unknown_key_is_an_error_naming_it() -> None:
    with pytest.raises(IlotsError, match=r"trainer\.max_epoch"):
        compose(["trainer.max_epoch=3"], root=REPO)
    with pytest.raises(IlotsError, match="unetz"):
        compose(["model=unetz"], root=REPO)


def test_stale_params_yaml_is_refused_outside_experiments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert write_params(tmp_path / "params.yaml", root=tmp_path)
    assert load_params(tmp_path / "params.yaml", root=tmp_path).trainer.max_epochs > 0
    conf = tmp_path / "conf" / "trainer" / "cpu.yaml"
    conf.write_text(conf.read_text().replace("max_epochs: 12", "max_epochs: 13"))
    with pytest.raises(
        IlotsError,
        match=r"disagrees with conf/ at .*trainer\.max_epochs \(12 in params\.yaml, 13 in conf/\)",
    ):
        load_params(tmp_path / "params.yaml", root=tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")  # inside `dvc exp run`, DVC composed params.yaml itself
    assert load_params(tmp_path / "params.yaml", root=tmp_path).trainer.max_epochs == 12


def test_every_stage_has_help() -> None:
    for stage in ("labels", "tiles", "train", "evaluate", "register", "predict", "summary", "sample-city"):
        out = subprocess.run(
            [sys.executable, "-m", "ilots.pipeline.cli", stage, "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0 and "usage: ilots" in out.stdout, stage


def test_outside_a_project_commands_get_ilots_own_conf_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The labeling commands run outside a project with the defaults of conf/, the one place they
    are written (labeling/cli.py kept a copy of them)."""
    import yaml

    from ilots.pipeline.config import project_or_default_config

    monkeypatch.chdir(tmp_path)
    cfg, root = project_or_default_config()
    written = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "config.yaml").read_text())
    assert root == tmp_path
    assert cfg.labeling.tile_size == written["labeling"]["tile_size"]
    assert cfg.labeling.title == written["labeling"]["title"] and cfg.labeling.storage == "local-files"


@pytest.mark.parametrize(
    "option",
    [
        f"{d.name}={p.stem}"
        for d in sorted((REPO / "conf").iterdir())
        if d.is_dir()
        for p in sorted(d.glob("*.yaml"))
    ],
)
def test_every_shipped_option_and_preset_passes_the_schema(option: str) -> None:
    from ilots.pipeline.config import to_dict
    from ilots.pipeline.schema import validate

    validate(to_dict(compose([option], root=REPO)))  # compose validates too; this says what is checked


def test_schema_refuses_in_well_under_a_second_naming_key_value_and_expectation() -> None:
    import time

    start = time.monotonic()
    with pytest.raises(
        IlotsError, match=r"trainer\.max_epochs='abc' is not valid: expected a whole number >= 1"
    ):
        compose(["trainer.max_epochs=abc"], root=REPO)
    assert time.monotonic() - start < 5  # generous: the sentence comes before any training work
    with pytest.raises(IlotsError, match=r"labels\.priorty .*did you mean labels\.priority\?"):
        compose(["+labels.priorty=[tree]"], root=REPO)
    # a + adds keys where ilots passes them on: a network's keyword arguments, a Lightning argument
    assert (
        compose(["+model.in_channels=3", "+trainer.gradient_clip_val=1.0"], root=REPO).model.in_channels == 3
    )


def test_params_written_with_overrides_is_what_the_stages_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert write_params(tmp_path / "params.yaml", ["experiment=tiny"], root=tmp_path)
    assert load_params(tmp_path / "params.yaml", root=tmp_path).tiles.size == 64  # accepted, tiny
    assert not write_params(tmp_path / "params.yaml", ["experiment=tiny"], root=tmp_path)
    conf = tmp_path / "conf" / "experiment" / "tiny.yaml"
    conf.write_text(conf.read_text().replace("size: 64", "size: 96"))
    with pytest.raises(
        IlotsError, match=r"tiles\.size \(64 in params\.yaml, 96 in conf/\).*`ilots params experiment=tiny`"
    ):
        load_params(tmp_path / "params.yaml", root=tmp_path)
