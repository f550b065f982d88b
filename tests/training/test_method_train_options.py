"""A method declares its training step and its own training options; the shared train config holds neither."""

from __future__ import annotations

import inspect
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lesionsam.config import RunConfig, TrainConfig, load_run_config
from lesionsam.configs import resolve_config
from lesionsam.models import ModelConfig, build_model
from lesionsam.models.backbone import get_preset
from lesionsam.models.interface import TrainOptions
from lesionsam.models.methods.refsam3d_pairs import RefSAM3DTrainOptions
from lesionsam.models.methods.sgp_budget import SGPTrainOptions
from lesionsam.models.registry import known_methods, method_spec, register_method, train_option_owners
from lesionsam.training.steps import AutomaticStep, InteractiveStep
from lesionsam.training.text_step import TextStep
from lesionsam.training.trainer import Trainer
from lesionsam.utils.dataclass_io import from_dict, to_dict

#: Every method-specific training key the shared TrainConfig used to carry.
OLD_METHOD_KEYS = ("gate_cost", "gate_target", "text_pairs", "text_contrast", "text_competition", "region_classes")


def test_the_shared_train_config_and_the_click_step_carry_no_method_option() -> None:
    owners = train_option_owners()
    assert set(OLD_METHOD_KEYS) <= set(owners)
    shared = {f.name for f in fields(TrainConfig)}
    assert not shared & set(owners), "a method's training option is a field of the shared TrainConfig"
    step_args = set(inspect.signature(InteractiveStep.__init__).parameters)
    assert not step_args & set(owners), "InteractiveStep takes a method's own training option"
    assert owners["gate_cost"] == ["sgp_dice", "sgp_sam"] and owners["region_classes"] == ["refsam3d"]


@pytest.mark.parametrize("method", sorted(known_methods()))
def test_every_method_declares_a_training_step_that_fits_its_model(method: str) -> None:
    spec = method_spec(method)
    options = {"num_classes": 2} if spec.training == "automatic" else {}
    model = build_model(ModelConfig(method=method, preset="tiny", backbone=get_preset("tiny"), options=options))
    takes_text = "text" in model.required_prompts | model.accepted_prompts
    assert (spec.training == "automatic") == model.prompt_free
    assert (spec.training == "text") == (takes_text and not model.prompt_free)
    assert spec.train_options is None or issubclass(spec.train_options, TrainOptions)


def test_a_registration_with_an_unknown_training_step_is_refused() -> None:
    with pytest.raises(ValueError, match="training step"):
        register_method("never_registered", training="clicky")(lambda config, options: None)  # type: ignore[arg-type]
    assert "never_registered" not in known_methods()


def test_training_options_are_keys_of_the_train_section_typed_by_the_method(tmp_path: Path) -> None:
    cfg = load_run_config(None, ["model.method=sgp_sam", "train.gate_cost=0.1", "train.gate_target=0.4"])
    assert cfg.train.options == SGPTrainOptions(gate_cost=0.1, gate_target=0.4)
    assert cfg.train.gate_cost == 0.1  # read as train.<key>, as it is written
    written = to_dict(cfg)["train"]
    assert written["gate_cost"] == 0.1 and written["gate_target"] == 0.4 and "options" not in written
    assert from_dict(RunConfig, to_dict(cfg)) == cfg  # what config.yaml holds reads back equal
    assert load_run_config(None, ["model.method=refsam3d"]).train.options == RefSAM3DTrainOptions()
    assert load_run_config(None, ["model.method=finetune"]).train.options is None
    with pytest.raises(AttributeError, match="train.gate_cost: no such train setting"):
        _ = load_run_config(None, ["model.method=finetune"]).train.gate_cost


def test_another_methods_option_is_refused_unless_it_is_left_at_its_default() -> None:
    with pytest.raises(ValueError, match=r"train.gate_cost=0.1 is a training option of sgp_dice, sgp_sam, not of "):
        load_run_config(None, ["model.method=finetune", "train.gate_cost=0.1"])
    with pytest.raises(ValueError, match=r"train.text_pairs=True is a training option of refsam3d, not of 'sgp_sam'"):
        load_run_config(None, ["model.method=sgp_sam", "train.text_pairs=true"])
    # configs/demo.yaml serves every method of the demo: its gate_cost 0 (the default) is no setting for finetune.
    demo = load_run_config(resolve_config("demo"), ["model.method=finetune"])
    assert demo.model.method == "finetune" and demo.train.options is None
    with pytest.raises(ValueError, match=r"did you mean 'train.gate_cost'\?"):
        load_run_config(None, ["model.method=sgp_sam", "train.gate_costs=0.1"])
    with pytest.raises(ValueError, match="train.options: write a method's training options as keys of the train"):
        load_run_config(None, ["model.method=sgp_sam", "train.options={gate_cost: 0.1}"])
    with pytest.raises(ValueError, match=r"train.options of method 'sgp_sam' are SGPTrainOptions"):
        RunConfig(model=ModelConfig(method="sgp_sam"), train=TrainConfig(options=RefSAM3DTrainOptions()))


def test_for_method_keeps_the_shared_settings_and_only_the_new_methods_options() -> None:
    base = load_run_config(None, ["model.method=sgp_sam", "train.gate_cost=0.1", "train.epochs=3"])
    finetune = base.for_method("finetune")
    assert finetune.model.method == "finetune" and finetune.train.options is None
    assert replace(finetune.train, options=base.train.options) == base.train  # nothing else changed
    dice = base.for_method("sgp_dice")  # a preset of sgp_sam: the same options
    assert dice.train.options == SGPTrainOptions(gate_cost=0.1)
    assert base.for_method("refsam3d").train.options == RefSAM3DTrainOptions()


def test_a_config_saved_before_the_options_moved_reads_back_the_same(tmp_path: Path) -> None:
    """A run folder's config.yaml of the old layout (every method's options in the shared train section, at their
    defaults, as every earlier run wrote them) reads as today's config of its method, so ablate and --resume match."""
    old = to_dict(load_run_config(None, ["model.method=finetune", "train.epochs=2"]))
    old["train"].update(
        gate_cost=0.0, gate_target=None, text_pairs=False, text_contrast=0.0, text_competition=0.0, region_classes=0.0
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_run_config(path) == load_run_config(None, ["model.method=finetune", "train.epochs=2"])
    old_sgp = {**old, "model": {**old["model"], "method": "sgp_sam"}}
    old_sgp["train"] = {**old["train"], "gate_cost": 0.03}
    assert from_dict(RunConfig, old_sgp).train.options == SGPTrainOptions(gate_cost=0.03)


@pytest.mark.parametrize(
    ("method", "step", "options"),
    [
        ("finetune", InteractiveStep, None),
        ("sgp_sam", InteractiveStep, SGPTrainOptions(gate_cost=0.5)),
        ("refsam3d", TextStep, RefSAM3DTrainOptions(text_pairs=True)),
        ("hsam", AutomaticStep, None),
    ],
)
def test_the_trainer_builds_the_step_the_method_declares(
    method: str, step: type, options: TrainOptions | None, tmp_path: Path
) -> None:
    overrides = {"sgp_sam": ["train.gate_cost=0.5"], "refsam3d": ["train.text_pairs=true"]}.get(method, [])
    model_options = ["model.options={num_classes: 2}"] if method == "hsam" else []
    cfg = load_run_config(None, [f"model.method={method}", "model.preset=tiny", *model_options, *overrides])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    model = trainer.build_model()
    texts = {2: ["tumour"], 4: ["cyst"]} if step is TextStep else None
    built = trainer.build_step(model, torch.nn.Identity(), texts)
    assert type(built) is step
    if step is not AutomaticStep:
        assert built.options == options and built.num_clicks == cfg.train.num_clicks


def test_the_method_options_extra_loss_is_what_the_click_step_adds() -> None:
    """InteractiveStep adds exactly ``options.extra_loss`` of the last iteration's output: for SGP-SAM, gate_cost x
    the gate budget of that output's gate-open probabilities."""
    from lesionsam.data.clicks import ClickSimulator
    from lesionsam.losses import batch_loss, build_loss
    from lesionsam.models.methods.sgp import SGPOptions, build_sgp_sam
    from lesionsam.models.methods.sgp_budget import gate_budget
    from lesionsam.training.steps import TrainBatch

    torch.manual_seed(0)
    model = build_sgp_sam(get_preset("tiny"), SGPOptions(gate_open_bias=0.5))
    image = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1))
    label = torch.zeros_like(image)
    label[:, :, 28:36, 28:36, 28:36] = 1
    outs = []
    decode = model.decode
    model.decode = lambda enc, prompts, **kw: (outs.append(decode(enc, prompts, **kw)), outs[-1])[1]  # type: ignore[method-assign]
    losses = {}
    for options in (None, SGPTrainOptions(gate_cost=0.7, gate_target=0.2)):
        step = InteractiveStep(
            model,
            batch_loss(build_loss("dice")),
            ClickSimulator(),
            num_clicks=2,
            mask_only_iterations=0,
            options=options,
        )
        outs.clear()
        with torch.no_grad():
            losses[options] = step(TrainBatch(image, label, np.random.default_rng(3)))["loss"]
    probs = outs[-1].extras["gate_probs"]
    assert float(gate_budget(probs, 0.2)) > 0.01
    added = float(losses[SGPTrainOptions(gate_cost=0.7, gate_target=0.2)] - losses[None])
    assert added == pytest.approx(0.7 * float(gate_budget(probs, 0.2)), rel=1e-5)
