"""One registry, one typed model config."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lesionsam.models import ModelConfig, build_model, known_methods
from lesionsam.models.backbone import Sam3D, get_preset
from lesionsam.utils.dataclass_io import apply_overrides, from_dict, save_yaml, to_dict


def test_sam_med3d_is_registered() -> None:
    assert "sam_med3d" in known_methods()
    model = build_model(ModelConfig.from_preset("tiny"))
    assert isinstance(model, Sam3D) and model.config == get_preset("tiny")


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown method 'sam_med3'\. Did you mean 'sam_med3d'\? Known: .*sam_med3d"):
        build_model(ModelConfig(method="sam_med3", backbone=get_preset("tiny")))


def test_options_for_a_method_without_options_are_refused() -> None:
    with pytest.raises(ValueError, match="takes no options"):
        build_model(ModelConfig(backbone=get_preset("tiny"), options={"gate": "learned"}))


def test_build_with_checkpoint_loads_the_official_weights(official_ckpt: Path) -> None:
    model = build_model(ModelConfig.from_preset("tiny", checkpoint=str(official_ckpt)))
    want = torch.load(official_ckpt, weights_only=True)["model_state_dict"]
    assert torch.equal(model.state_dict()["image_encoder.pos_embed"], want["image_encoder.pos_embed"])


def test_model_config_from_yaml_mapping_with_preset_and_overrides(tmp_path: Path) -> None:
    data = yaml.safe_load("preset: tiny\nbackbone:\n  img_size: 96\n  encoder_global_attn_indexes: [0, 3]\n")
    cfg = from_dict(ModelConfig, data)
    assert cfg.backbone == get_preset("tiny").replace(img_size=96, encoder_global_attn_indexes=(0, 3))
    save_yaml(cfg, tmp_path / "m.yaml")
    again = from_dict(ModelConfig, yaml.safe_load((tmp_path / "m.yaml").read_text()))
    assert again == cfg
    assert to_dict(again)["backbone"]["encoder_global_attn_indexes"] == [0, 3]


def test_model_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"unknown config key 'backbone.img_sise'; did you mean 'backbone.img_size'\?"):
        from_dict(ModelConfig, {"preset": "tiny", "backbone": {"img_sise": 96}})
    with pytest.raises(TypeError, match="backbone.img_size: expected an integer"):
        from_dict(ModelConfig, {"preset": "tiny", "backbone": {"img_size": "big"}})
    with pytest.raises(ValueError, match="Unknown backbone preset 'tinyy'"):
        from_dict(ModelConfig, {"preset": "tinyy"})
    with pytest.raises(ValueError, match="attention implementation"):
        ModelConfig(attention="flash")


def test_overrides() -> None:
    data = apply_overrides({"model": {"preset": "tiny"}}, ["model.backbone.img_size=96", "seed=3"])
    assert data == {"model": {"preset": "tiny", "backbone": {"img_size": 96}}, "seed": 3}
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["model.preset"])


def test_prompt_errors_name_the_method_not_the_class() -> None:
    from lesionsam.models.interface import Prompts

    model = build_model(ModelConfig.from_preset("tiny"))
    assert model.method_name == "sam_med3d"
    with pytest.raises(ValueError, match=r"^method 'sam_med3d' does not take prompt\(s\) \['text'\]"):
        model.check_prompts(Prompts(text=["liver tumour"]))


def test_loss_choices_are_presets_of_a_method_and_the_same_as_that_method_with_the_loss() -> None:
    """``sgp_dice`` and ``finetune_zoom`` are names for a loss choice: the base method's model and builder with
    another default loss; ``model.method=BASE train.loss=LOSS`` (with the preset's loss options) gives the same model
    and the same loss."""
    from lesionsam.config import load_run_config
    from lesionsam.models.registry import method_spec, register_preset
    from lesionsam.training.trainer import Trainer

    cases = (
        ("sgp_dice", "sgp_sam", "dice", []),
        ("finetune_zoom", "finetune", "zoom", ["train.loss_options={balance: none}"]),
    )
    for preset, base, loss, options in cases:
        spec, base_spec = method_spec(preset), method_spec(base)
        assert spec.preset_of == base and base_spec.preset_of is None
        assert (spec.builder, spec.options, spec.loss) == (base_spec.builder, base_spec.options, loss)
        by_name = load_run_config(None, ["model.preset=tiny", f"model.method={preset}"])
        by_loss = load_run_config(None, ["model.preset=tiny", f"model.method={base}", f"train.loss={loss}", *options])
        loss_a, loss_b = Trainer(by_name, "unused").build_loss(), Trainer(by_loss, "unused").build_loss()
        assert type(loss_a) is type(loss_b) and repr(loss_a) == repr(loss_b)
        torch.manual_seed(0)
        model_a = build_model(by_name.model)
        torch.manual_seed(0)
        model_b = build_model(by_loss.model)
        assert type(model_a) is type(model_b) and model_a.state_dict().keys() == model_b.state_dict().keys()
    with pytest.raises(ValueError, match="is not registered"):
        register_preset("nope_dice", of="no_such_method", loss="dice")


SRC = Path(__file__).resolve().parents[2] / "src"


def _registered_in_source() -> set[str]:
    """Every method name the modules of ``lesionsam/models/methods`` register (``register_method("name", ...)`` and
    ``register_preset("name", ...)`` calls), read from the source."""
    names = set()
    for path in (SRC / "lesionsam" / "models" / "methods").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("register_method", "register_preset"):
                names.add(node.args[0].value)  # type: ignore[attr-defined]
    return names


@pytest.mark.parametrize(
    "entry",
    [
        "from lesionsam.models.registry import build_model",
        "from lesionsam.models.registry import load_model",
        "from lesionsam.config import load_run_config",
        "import lesionsam.models.checkpoint",  # imports no registry itself: the package registers the methods
    ],
)
def test_a_fresh_interpreter_knows_every_builtin_method_after_any_entry_import(entry: str) -> None:
    """The registry imports no method; importing anything under ``lesionsam.models`` runs the package, which imports
    ``lesionsam.models.methods`` (each module registers itself), so every entry point finds every method."""
    code = f"{entry}; import sys; print(' '.join(sorted(sys.modules['lesionsam.models.registry']._METHODS)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    expected = _registered_in_source()
    assert {"sam_med3d", "finetune", "sgp_sam", "refsam3d", "hsam"} <= expected
    assert set(out.split()) == expected
