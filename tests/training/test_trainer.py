"""The trainer: a run folder a researcher can trust, exact resume, frozen groups, DDP."""

from __future__ import annotations

import csv
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lesionsam.config import RunConfig, load_run_config
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.models.checkpoint import CheckpointError, load_checkpoint
from lesionsam.training.distributed import seed_everything
from lesionsam.training.trainer import Trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "ds"
    write_synthetic_dataset(root, cases=5, size=40, seed=3)
    return root


def _config(root: Path, *extra: str) -> RunConfig:
    base = [
        f"data.root={root}",
        "data.spacing=[1.0,1.0,1.0]",
        "model.preset=tiny",
        "model.method=finetune",
        "train.epochs=2",
        "train.batch_size=2",
        "train.num_clicks=2",
        "train.mask_only_iterations=1",
        "train.device=cpu",
        "train.deterministic=true",
        "train.lr=1e-3",
    ]
    return load_run_config(None, [*base, *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_run_folder_holds_config_splits_log_and_checkpoints(dataset: Path, tmp_path: Path) -> None:
    result = Trainer(_config(dataset), tmp_path / "run", progress=False).fit()
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["best.pt", "config.yaml", "last.pt", "provenance.json", "splits.json", "train_log.csv"]
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["train_loss"]) > 0 for r in rows) and rows[-1]["val_dice"] != ""
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["epoch"] == 2 and ckpt["method"] == "finetune"
    assert ckpt["config"]["model"]["backbone"]["img_size"] == 64
    assert ckpt["optimizer"] is not None and ckpt["scheduler"] is not None


class _Kill(Exception):
    pass


def test_killed_mid_epoch_and_resumed_gives_the_same_weights(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, "train.epochs=3", "train.batch_size=1")
    Trainer(cfg, tmp_path / "straight", progress=False).fit()

    def kill(trainer: Trainer, event: str, info: dict) -> None:
        if event == "step" and info["epoch"] == 1 and info["step"] == 1:
            raise _Kill  # dies in the middle of the second epoch, after one optimiser step of it

    with pytest.raises(_Kill):
        Trainer(cfg, tmp_path / "resumed", progress=False, callbacks=[kill]).fit()
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    Trainer(cfg, tmp_path / "resumed", progress=False).fit(resume=True)
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = list(csv.DictReader((tmp_path / "resumed" / "train_log.csv").open()))
    assert [r["epoch"] for r in log] == ["1", "2", "3"]


def test_resume_with_other_settings_is_refused(dataset: Path, tmp_path: Path) -> None:
    Trainer(_config(dataset, "train.epochs=1"), tmp_path / "run", progress=False).fit()
    with pytest.raises(CheckpointError, match=r"train settings differ .*lr"):
        Trainer(_config(dataset, "train.epochs=2", "train.lr=5e-4"), tmp_path / "run", progress=False).fit(resume=True)
    with pytest.raises(FileNotFoundError, match="no .*last.pt"):
        Trainer(_config(dataset), tmp_path / "other", progress=False).fit(resume=True)


def test_frozen_encoder_stays_bit_identical(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, "train.epochs=1", "train.freeze_encoder=true")
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    seed_everything(cfg.train.seed, epoch=-1)  # as fit() does before building the model
    before = {k: v.clone() for k, v in trainer.build_model().state_dict().items()}
    trainer.fit()
    after = _weights(tmp_path / "run" / "last.pt")
    enc = [k for k in before if k.startswith("image_encoder.")]
    dec = [k for k in before if k.startswith("mask_decoder.") and k.endswith("weight")]
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)


def test_target_label_absent_everywhere_is_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no case .* has label value 7"):
        Trainer(_config(dataset, "data.target_label=7"), tmp_path / "run", progress=False).fit()


def test_the_data_set_is_checked_before_training_starts(tmp_path: Path) -> None:
    """A label value dataset.json does not list (one case of five; training alone would not notice): one line naming
    the case and the value, and no run folder."""
    import shutil

    from lesionsam.data.io import read_image, write_image

    root = tmp_path / "ds"
    write_synthetic_dataset(root, cases=5, size=40, seed=3)
    label_path = sorted((root / "labelsTr").iterdir())[1]
    label = read_image(label_path)
    array = label.array.copy()
    array[0, 0, 0] = 9
    label_path.unlink()
    write_image(array, label_path, reference=label)
    with pytest.raises(ValueError, match=r"failed its check before training: case .*: label values \[9\] are not in"):
        Trainer(_config(root), tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run").exists()
    shutil.rmtree(root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_ranks_identical(dataset: Path, tmp_path: Path) -> None:
    """torchrun, 2 processes, gloo on CPU: after a step both ranks hold the same weights."""
    script = tmp_path / "ddp_run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, torch
            from lesionsam.config import load_run_config
            from lesionsam.training.trainer import Trainer, seed_everything
            cfg = load_run_config(None, [
                "data.root={dataset}", "data.spacing=[1.0,1.0,1.0]", "model.preset=tiny", "model.method=finetune",
                "train.epochs=1", "train.batch_size=1", "train.max_steps_per_epoch=1", "train.num_clicks=2",
                "train.device=cpu", "train.lr=1e-2",
            ])
            def save(trainer, event, info):
                if event == "epoch":
                    torch.save(trainer.model.state_dict(), "{tmp_path}/rank%s.pt" % os.environ["RANK"])
            before = None
            Trainer(cfg, "{tmp_path}/run", progress=False, callbacks=[save]).fit()
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    proc = subprocess.run([*cmd, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = Trainer(load_run_config(None, ["model.preset=tiny", "model.method=finetune"]), tmp_path).build_model()
    changed = 0
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
        changed += int(not torch.equal(r0[key], init.state_dict()[key]))
    assert changed > 0  # a real step happened


def test_negative_crops_need_a_text_referred_method(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a method prompted without a click"):
        Trainer(_config(dataset, "data.negative_fraction=0.5", "train.epochs=1"), tmp_path / "r", progress=False).fit()


def test_text_step_trains_on_empty_crops_with_error_clicks() -> None:
    """A crop without its target class (a negative crop) trains with text, then clicks on the false positives."""
    from lesionsam.data.clicks import ClickSimulator
    from lesionsam.losses import batch_loss, build_loss
    from lesionsam.models.backbone import get_preset
    from lesionsam.models.methods.refsam3d import build_refsam3d
    from lesionsam.training.steps import InteractiveStep, TrainBatch
    from lesionsam.training.text_step import TextStep

    torch.manual_seed(0)
    model = build_refsam3d(get_preset("tiny"))
    with torch.no_grad():  # a model that predicts foreground somewhere, so there are errors to click on
        model.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.add_(1.0)
    seen: list = []
    original = model.decode

    def spy(encoded, prompts, **kw):
        seen.append(prompts)
        return original(encoded, prompts, **kw)

    model.decode = spy  # type: ignore[method-assign]
    image = torch.randn(2, 1, 64, 64, 64)
    empty = torch.zeros(2, 1, 64, 64, 64)
    dice_ce = batch_loss(build_loss("dice_ce"))
    step = TextStep(model, dice_ce, ClickSimulator(), num_clicks=3, mask_only_iterations=0, texts={2: ["tumour"]})
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(4):  # clicks-only batches would need a lesion: an empty batch always keeps its text
        seen.clear()
        loss = step(TrainBatch(image, empty, rng, torch.tensor([2, 2])))["loss"]
        assert torch.isfinite(loss) and all(p.text == ["tumour", "tumour"] for p in seen)
        assert seen[0].points is None  # text alone first
        assert seen[1].points.shape == (2, 1, 3) and set(seen[1].labels.flatten().tolist()) <= {0, -1}
    loss.backward()
    assert model.ref_decoder.head[-1].weight.grad is not None
    no_text = InteractiveStep(model, dice_ce, ClickSimulator(), num_clicks=2, mask_only_iterations=0)
    with pytest.raises(ValueError, match="no voxel of its target label"):
        no_text(TrainBatch(image, empty, rng, torch.tensor([2, 2])))


def test_text_referred_training_with_negative_crops_validates_on_both(tmp_path: Path) -> None:
    root = tmp_path / "two"
    write_synthetic_dataset(root, cases=4, size=40, seed=5, lesion_classes=2)
    cfg = _config(
        root,
        "model.method=refsam3d",
        "data.target_labels=[2,4]",
        "data.negative_fraction=0.5",
        "data.val_fraction=0.5",
        "train.epochs=1",
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    train_set, val_set = trainer.build_datasets()
    # Validation: every positive crop (one per case and label present) has a negative twin.
    assert val_set is not None and len(val_set) % 2 == 0
    half = len(val_set) // 2
    positives = [val_set[i]["label"].sum().item() for i in range(half)]
    assert all(v > 0 for v in positives)
    result = trainer.fit()
    assert result.best_checkpoint is not None and 0.0 <= result.best_val_dice <= 1.0
    # The checkpoint keeps the class texts it was trained on (here dataset.json's label names), so text alone
    # can be decided against the other class.
    from lesionsam.inference.predictor import Predictor
    from lesionsam.inference.whole_volume import WholeVolume

    predictor = Predictor.from_checkpoint(result.best_checkpoint)
    assert predictor.class_texts == {2: ("tumour",), 4: ("cyst",)}
    whole = WholeVolume(predictor)
    assert whole.competitors("Tumour") == ("cyst",) and whole.competitors("kidney tumour") == ()


def test_text_pairs_train_the_other_class_text_on_the_same_crop() -> None:
    """With train.text_pairs a text batch doubles: the same crop again, with another class's text and mask."""
    import numpy as np

    from lesionsam.data.clicks import ClickSimulator
    from lesionsam.losses import batch_loss, build_loss
    from lesionsam.models.backbone import get_preset
    from lesionsam.models.methods.refsam3d import build_refsam3d
    from lesionsam.models.methods.refsam3d_pairs import RefSAM3DTrainOptions
    from lesionsam.training.steps import TrainBatch
    from lesionsam.training.text_step import TextStep

    torch.manual_seed(0)
    model = build_refsam3d(get_preset("tiny"))
    seen: dict[str, list] = {"text": [], "images": [], "targets": []}
    decode, encode = model.decode, model.encode
    model.decode = lambda enc, prompts, **kw: (seen["text"].append(prompts.text), decode(enc, prompts, **kw))[1]  # type: ignore[method-assign]
    model.encode = lambda image: (seen["images"].append(image), encode(image))[1]  # type: ignore[method-assign]
    dice_ce = build_loss("dice_ce")

    def loss(logits, target):
        seen["targets"].append(target)
        return dice_ce(logits, target)

    values = torch.zeros(1, 1, 64, 64, 64, dtype=torch.int64)
    values[0, 0, 20:30, 20:30, 20:30] = 2
    values[0, 0, 40:44, 40:44, 40:44] = 4
    image = torch.randn(1, 1, 64, 64, 64)
    texts = {2: ["liver tumour"], 4: ["liver cyst"]}
    step = TextStep(
        model,
        batch_loss(loss),
        ClickSimulator(),
        num_clicks=2,
        mask_only_iterations=0,
        texts=texts,
        options=RefSAM3DTrainOptions(text_pairs=True),
    )
    rng = np.random.default_rng(1)
    for _ in range(8):  # a clicks-only batch (one in four) is not paired; a text batch always is
        for v in seen.values():
            v.clear()
        out = step(TrainBatch(image, (values == 2).float(), rng, torch.tensor([2]), values))["loss"]
        assert torch.isfinite(out)
        if seen["text"][0] is not None:
            break
    assert seen["text"][0] == ["liver tumour", "liver cyst"]
    assert torch.equal(seen["images"][0], torch.cat([image, image]))
    torch.testing.assert_close(seen["targets"][0][1], (values[0] == 4).float())
    torch.testing.assert_close(seen["targets"][0][0], (values[0] == 2).float())


def test_text_margin_loss_matches_a_voxel_by_voxel_reference() -> None:
    from lesionsam.training.text_terms import text_margin_loss

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 2, 1, 4, 4, 4, generator=gen) * 3
    values = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=gen)
    mask_a, mask_b = values == 1, values == 2
    terms = []
    for la, lb, v in zip(a.flatten().tolist(), b.flatten().tolist(), values.flatten().tolist(), strict=True):
        if v == 1:
            terms.append(math.log1p(math.exp(lb - la)))
        elif v == 2:
            terms.append(math.log1p(math.exp(la - lb)))
    want = sum(terms) / len(terms)
    assert float(text_margin_loss(a, b, mask_a, mask_b)) == pytest.approx(want, rel=1e-5)
    # Swapping the texts swaps the roles: same value; the image-only part of the logits cancels.
    assert float(text_margin_loss(b + 7.0, a + 7.0, mask_b, mask_a)) == pytest.approx(want, rel=1e-5)
    empty = torch.zeros_like(mask_a)
    assert float(text_margin_loss(a, b, empty, empty)) == 0.0


@pytest.mark.parametrize("term", ["text_contrast", "text_competition", "region_classes"])
def test_text_pair_terms_add_their_weight_times_the_term_of_the_text_only_logits(term: str) -> None:
    """The step's loss with text_contrast (text_competition) w is the loss without it plus w · the margin (the
    training loss of the competing logits: each half against background and the other half's text) of the first,
    text-only logits of the two halves of the paired batch; with region_classes w, plus w · the per-lesion class
    cross-entropy of both classes' lesions (one each here) against the pair's texts."""
    import numpy as np

    from lesionsam.data.clicks import ClickSimulator
    from lesionsam.losses import batch_loss, build_loss
    from lesionsam.models import competing_logits
    from lesionsam.models.backbone import get_preset
    from lesionsam.models.methods.refsam3d import build_refsam3d
    from lesionsam.models.methods.refsam3d_pairs import RefSAM3DTrainOptions
    from lesionsam.training.steps import TrainBatch
    from lesionsam.training.text_step import TextStep
    from lesionsam.training.text_terms import region_class_loss, text_margin_loss

    torch.manual_seed(0)
    model = build_refsam3d(get_preset("tiny"))
    with torch.no_grad():  # a text-dependent full-resolution decoder, as after training
        model.ref_decoder.film.weight.normal_(0.0, 0.5)
        model.ref_decoder.head[-1].weight.normal_(0.0, 0.5)
    first: list[Tensor] = []
    decode = model.decode

    def spy(enc, prompts, **kw):
        out = decode(enc, prompts, **kw)
        if prompts.points is None and prompts.mask is None:
            first.append(out.logits.detach())
        return out

    model.decode = spy  # type: ignore[method-assign]
    values = torch.zeros(1, 1, 64, 64, 64, dtype=torch.int64)
    values[0, 0, 20:30, 20:30, 20:30] = 2
    values[0, 0, 40:44, 40:44, 40:44] = 4
    image = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(4))
    texts = {2: ["liver tumour"], 4: ["liver cyst"]}
    losses = {}
    for weight in (0.0, 0.5):
        step = TextStep(
            model,
            batch_loss(build_loss("dice_ce")),
            ClickSimulator(),
            num_clicks=2,
            mask_only_iterations=0,
            texts=texts,
            options=RefSAM3DTrainOptions(text_pairs=True, **{term: weight}),
        )
        first.clear()
        rng = np.random.default_rng(2)  # a seed whose first batch has text (one in four has none)
        with torch.no_grad():
            batch = TrainBatch(image, (values == 2).float(), rng, torch.tensor([2]), values)
            losses[weight] = step(batch)["loss"]
        assert len(first) == 1 and first[0].shape[0] == 2
    a, b = first[0][:1], first[0][1:]
    pair_label = torch.cat([values == 2, values == 4]).float()
    if term == "text_contrast":
        expected = text_margin_loss(a, b, values == 2, values == 4)
    elif term == "region_classes":
        with torch.no_grad():
            encoded = model.encode(torch.cat([image, image]))
            expected = region_class_loss(model, encoded, pair_label, ["liver tumour", "liver cyst"])
            scores = model.region_scores(encoded, 0, pair_label.bool(), ["liver tumour", "liver cyst"])
        reference = torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1]))  # two lesions, their classes
        assert float(expected) == pytest.approx(float(reference), rel=1e-5)
    else:
        competing = torch.cat([competing_logits(a, b), competing_logits(b, a)])
        expected = build_loss("dice_ce")(competing, pair_label)
    assert float(expected) > 0.05
    assert float(losses[0.5] - losses[0.0]) == pytest.approx(0.5 * float(expected), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("term", ["text_contrast", "text_competition", "region_classes"])
def test_text_pair_terms_need_text_pairs_and_a_non_negative_weight(term: str) -> None:
    pairs = "set train.options.text_pairs"
    with pytest.raises(ValueError, match=f"train.options.{term} compares the two texts of a pair: {pairs}"):
        load_run_config(None, ["model.method=refsam3d", f"train.options.{term}=1.0"])
    with pytest.raises(ValueError, match=f"train.options.{term} must be >= 0, got -1"):
        load_run_config(None, ["model.method=refsam3d", f"train.options.{term}=-1", "train.options.text_pairs=true"])


def test_region_classes_need_a_region_classifier() -> None:
    from lesionsam.data.clicks import ClickSimulator
    from lesionsam.losses import build_loss
    from lesionsam.models.backbone import build_sam3d, get_preset
    from lesionsam.models.methods.refsam3d_pairs import RefSAM3DTrainOptions
    from lesionsam.training.text_step import TextStep

    with pytest.raises(ValueError, match="train.options.region_classes needs a model with a region classifier"):
        TextStep(
            build_sam3d(get_preset("tiny")),
            build_loss("dice_ce"),
            ClickSimulator(),
            num_clicks=1,
            mask_only_iterations=0,
            texts={2: ["tumour"], 4: ["cyst"]},
            options=RefSAM3DTrainOptions(text_pairs=True, region_classes=1.0),
        )


def test_regions_won_keeps_the_lesions_the_region_scores_give_to_the_first_text() -> None:
    """A stand-in scorer: a region belongs to the first text when its mean image value is positive."""
    from types import SimpleNamespace

    from lesionsam.training.text_terms import regions_won

    image = torch.zeros(1, 1, 16, 16, 16)
    mask = torch.zeros(1, 1, 16, 16, 16, dtype=torch.bool)
    mask[0, 0, 1:4, 1:4, 1:4] = mask[0, 0, 8:12, 8:12, 8:12] = True
    mask[0, 0, 14, 14, 14] = True  # a one-voxel lesion is decided too
    image[0, 0, 1:4, 1:4, 1:4], image[0, 0, 8:12, 8:12, 8:12], image[0, 0, 14, 14, 14] = 1.0, -1.0, 2.0

    def region_scores(encoded, crop, masks, texts):
        assert crop == 0 and texts == ["liver tumour", "liver cyst"]
        mean = (encoded[crop, 0] * masks[:, 0]).sum((1, 2, 3)) / masks[:, 0].sum((1, 2, 3))
        return torch.stack([mean, -mean], dim=1)

    model = SimpleNamespace(region_scores=region_scores)
    kept = regions_won(model, image, mask, ["liver tumour", "liver cyst"])
    expected = torch.zeros_like(mask)
    expected[0, 0, 1:4, 1:4, 1:4] = expected[0, 0, 14, 14, 14] = True
    assert torch.equal(kept, expected)
    assert not regions_won(model, image, torch.zeros_like(mask), ["liver tumour", "liver cyst"]).any()
