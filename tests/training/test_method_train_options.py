"""A method declares its training step and its own training options; the shared train config holds neither."""

from __future__ import annotations

import inspect
import logging
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lesionsam.config import RunConfig, TrainConfig, load_run_config
from lesionsam.configs import preset_names, resolve_config
from lesionsam.models import ModelConfig, build_model
from lesionsam.models.backbone import get_preset
from lesionsam.models.interface import TrainOptions
from lesionsam.models.methods.refsam3d_pairs import RefSAM3DTrainOptions
from lesionsam.models.methods.sgp_budget import SGPTrainOptions
from lesionsam.models.registry import known_methods, method_spec, register_method, train_option_owners
from lesionsam.training.steps import AutomaticStep, InteractiveStep
from lesionsam.training.text_step import TextStep
from lesionsam.training.trainer import Trainer
from lesionsam.utils.dataclass_io import apply_overrides, from_dict, to_dict
from lesionsam.workflows.demo import DemoSettings
from lesionsam.workflows.sweep import STAGES

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


def test_training_options_are_the_typed_options_section_of_train(tmp_path: Path) -> None:
    cfg = load_run_config(
        None, ["model.method=sgp_sam", "train.options.gate_cost=0.1", "train.options.gate_target=0.4"]
    )
    assert cfg.train.options == SGPTrainOptions(gate_cost=0.1, gate_target=0.4)
    assert cfg.train.options.gate_cost == 0.1
    written = to_dict(cfg)["train"]
    assert written["options"] == {"gate_cost": 0.1, "gate_target": 0.4} and "gate_cost" not in written
    assert from_dict(RunConfig, to_dict(cfg)) == cfg  # what config.yaml holds reads back equal
    (tmp_path / "c.yaml").write_text("model: {method: sgp_sam}\ntrain: {epochs: 3, options: {gate_cost: 0.1}}\n")
    assert load_run_config(tmp_path / "c.yaml").train.options == SGPTrainOptions(gate_cost=0.1)
    assert load_run_config(None, ["model.method=refsam3d"]).train.options == RefSAM3DTrainOptions()
    finetune = load_run_config(None, ["model.method=finetune"])
    assert finetune.train.options is None and "options" not in to_dict(finetune)["train"]
    assert from_dict(RunConfig, to_dict(finetune)) == finetune
    assert "__getattr__" not in vars(TrainConfig)  # no hidden forwarding: train.gate_cost is no attribute
    with pytest.raises(AttributeError):
        _ = cfg.train.gate_cost  # type: ignore[attr-defined]


def test_an_unknown_option_or_options_for_a_method_with_none_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^unknown config key 'train.options.gate_costs'; did you mean "):
        load_run_config(None, ["model.method=sgp_sam", "train.options.gate_costs=0.1"])
    with pytest.raises(ValueError, match=r"the keys of 'train.options' are gate_cost, gate_target$"):
        load_run_config(None, ["model.method=sgp_sam", "train.options.budget=0.1"])
    with pytest.raises(ValueError, match=r"'train.options.budget': method 'finetune' has no training options"):
        load_run_config(None, ["model.method=finetune", "train.options.budget=0.1"])
    with pytest.raises(TypeError, match=r"train.options: expected a mapping of the training options of 'sgp_sam'"):
        load_run_config(None, ["model.method=sgp_sam", "train.options=0.1"])
    with pytest.raises(ValueError, match=r"train.options.gate_cost must be >= 0, got -1.0"):
        load_run_config(None, ["model.method=sgp_sam", "train.options.gate_cost=-1"])


def test_the_old_spelling_reads_as_the_new_one_and_says_so_in_one_line(tmp_path: Path, caplog) -> None:
    new = load_run_config(
        None, ["model.method=sgp_sam", "train.options.gate_cost=0.1", "train.options.gate_target=0.4"]
    )
    with caplog.at_level(logging.WARNING, logger="lesionsam.config"):
        old = load_run_config(None, ["model.method=sgp_sam", "train.gate_cost=0.1", "train.gate_target=0.4"])
    assert old == new
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [
        "train.gate_cost, train.gate_target: old spelling, read as train.options.gate_cost, "
        "train.options.gate_target (a method's training options live in train.options)"
    ]
    caplog.clear()
    (tmp_path / "old.yaml").write_text(
        "model: {method: sgp_sam}\ntrain: {epochs: 3, gate_cost: 0.1, gate_target: 0.4}\n"
    )
    with caplog.at_level(logging.WARNING, logger="lesionsam.config"):
        from_file = load_run_config(tmp_path / "old.yaml")
        # The order of YAML and overrides holds across spellings: the override wins, in either spelling.
        assert load_run_config(tmp_path / "old.yaml", ["train.options.gate_cost=0.2"]).train.options.gate_cost == 0.2
        assert load_run_config(resolve_config("demo"), ["train.gate_cost=0.2"]).train.options.gate_cost == 0.2
    assert from_file == replace(new, train=replace(new.train, epochs=3))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "train.gate_cost, train.gate_target",
        "train.gate_cost, train.gate_target",
        "train.gate_cost",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lesionsam.config"):
        assert from_dict(RunConfig, to_dict(old)) == new  # the new spelling says nothing
        flat = to_dict(old)
        flat["train"].update(flat["train"].pop("options"), gate_cost=0.3)  # a saved config of the old layout
        assert from_dict(RunConfig, flat).train.options == SGPTrainOptions(gate_cost=0.3, gate_target=0.4)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["train.gate_cost, train.gate_target"]


def test_another_methods_option_is_refused_unless_it_is_left_at_its_default(caplog) -> None:
    with pytest.raises(
        ValueError, match=r"train.options.gate_cost=0.1 is a training option of sgp_dice, sgp_sam, not of "
    ):
        load_run_config(None, ["model.method=finetune", "train.gate_cost=0.1"])
    with pytest.raises(
        ValueError, match=r"train.options.gate_cost=0.1 is a training option of sgp_dice, sgp_sam, not of "
    ):
        load_run_config(None, ["model.method=finetune", "train.options.gate_cost=0.1"])
    with pytest.raises(
        ValueError, match=r"train.options.text_pairs=True is a training option of refsam3d, not of 'sgp_sam'"
    ):
        load_run_config(None, ["model.method=sgp_sam", "train.options.text_pairs=true"])
    # configs/demo.yaml serves every method of the demo: its gate_cost 0 (the default) is no setting for finetune,
    # left out with one line saying so.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lesionsam.config"):
        demo = load_run_config(resolve_config("demo"), ["model.method=finetune"])
    assert demo.model.method == "finetune" and demo.train.options is None
    assert [r.getMessage() for r in caplog.records] == [
        "train.options.gate_cost (of sgp_dice, sgp_sam): other methods' training options at their defaults, "
        "left out for 'finetune'"
    ]
    with pytest.raises(ValueError, match=r"did you mean 'train.options.gate_cost'\?"):
        load_run_config(None, ["model.method=sgp_sam", "train.gate_costs=0.1"])
    with pytest.raises(ValueError, match=r"train.options of method 'sgp_sam' are SGPTrainOptions"):
        RunConfig(model=ModelConfig(method="sgp_sam"), train=TrainConfig(options=RefSAM3DTrainOptions()))


def test_for_method_keeps_the_shared_settings_and_only_the_new_methods_options() -> None:
    base = load_run_config(None, ["model.method=sgp_sam", "train.options.gate_cost=0.1", "train.epochs=3"])
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


def test_every_packaged_preset_and_sweep_variant_reads_in_the_new_spelling(caplog) -> None:
    """The presets and the sweep variants are written in the new spelling (nothing to say) and read the same values
    as their old spelling did."""
    s = DemoSettings.quick()
    variants = [v for stage, _ in STAGES.values() for v in stage]
    assert any(o.startswith("train.options.") for v in variants for o in v.overrides)
    read = {}
    with caplog.at_level(logging.WARNING, logger="lesionsam.config"):
        for name in preset_names():
            assert load_run_config(resolve_config(name)).model.method in known_methods()
        for v in variants:
            base = RunConfig(model=s.model(v.method), train=s.train_config(epochs=1, seed=0))
            read[v.name] = from_dict(RunConfig, apply_overrides(to_dict(base), v.overrides))  # as demo.transfer does
    assert not caplog.records, caplog.text
    for v in variants:
        base = RunConfig(model=s.model(v.method), train=s.train_config(epochs=1, seed=0))
        old = [o.replace("train.options.", "train.") for o in v.overrides]
        assert read[v.name] == from_dict(RunConfig, apply_overrides(to_dict(base), old)), v.name
    assert read["sgp_target50"].train.options == SGPTrainOptions(gate_cost=1.0, gate_target=0.5)
    for name in ("liver_sgp_sam", "brats_sgp_sam", "demo"):
        assert load_run_config(resolve_config(name)).train.options == SGPTrainOptions(gate_cost=0.0)


#: ``config.yaml`` of an sgp_sam run as the code before ``train.options`` wrote it (its ``train:`` section verbatim;
#: the model section shortened to what differs from the defaults).
OLD_SGP_CONFIG_YAML = """\
name: run
model:
  method: sgp_sam
  preset: tiny
  checkpoint: null
  attention: fast
  options: {}
train:
  epochs: 10
  batch_size: 2
  accumulate: 1
  max_steps_per_epoch: null
  lr: 0.0001
  lr_encoder: null
  lr_new: null
  freeze_encoder: false
  weight_decay: 0.01
  schedule: cosine
  warmup_steps: 0
  num_clicks: 5
  mask_only_iterations: 1
  click_mode: random
  loss: null
  loss_options: {}
  logit_adjustment: 0.0
  amp: true
  grad_checkpointing: false
  val_every: 1
  val_clicks: 1
  seed: 0
  deterministic: false
  device: auto
  gate_cost: 0.03
  gate_target: 0.5
"""


def test_a_run_folder_written_before_train_options_is_the_same_config(tmp_path: Path, caplog) -> None:
    """``lesionsam ablate`` and ``--resume`` compare a run folder's config by value: an old one still matches."""
    path = tmp_path / "config.yaml"
    path.write_text(OLD_SGP_CONFIG_YAML)
    now = load_run_config(None, ["model.method=sgp_sam", "model.preset=tiny", "train.options.gate_cost=0.03"])
    now = replace(now, train=replace(now.train, options=SGPTrainOptions(gate_cost=0.03, gate_target=0.5)))
    assert load_run_config(path) == now
    assert to_dict(from_dict(RunConfig, yaml.safe_load(OLD_SGP_CONFIG_YAML))) == to_dict(now)  # as resume_run reads


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
    overrides = {"sgp_sam": ["train.options.gate_cost=0.5"], "refsam3d": ["train.options.text_pairs=true"]}.get(
        method, []
    )
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
