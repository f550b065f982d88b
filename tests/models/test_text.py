"""Tests for the text encoders (lesionsam.models.text)."""

from __future__ import annotations

import builtins
import json
import zlib
from pathlib import Path

import pytest
import torch

from lesionsam.models.text import (
    BUILTIN_VOCABULARY,
    BuiltinTextEncoder,
    BuiltinTokenizer,
    TextEmbedding,
    TextEncoder,
    masked_mean,
)
from lesionsam.models.text_encoders import HFClipTextEncoder, OpenClipTextEncoder, build_text_encoder


def _builtin(**kwargs: object) -> BuiltinTextEncoder:
    torch.manual_seed(0)
    return BuiltinTextEncoder(dim=32, num_heads=4, **kwargs)  # type: ignore[arg-type]


class _CountingCalls:
    """Wrap an encoder's _encode to count model runs."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.calls: list[list[str]] = []
        original = encoder._encode

        def counted(texts: list[str]):  # noqa: ANN202
            self.calls.append(list(texts))
            return original(texts)

        encoder._encode = counted  # type: ignore[method-assign]


# ----------------------------------------------------------------------------------------------------------------
# Built-in tokenizer
# ----------------------------------------------------------------------------------------------------------------


def test_tokenizer_known_words_and_synonyms() -> None:
    tok = BuiltinTokenizer()
    for word in ("liver", "hepatic", "tumour", "tumor", "lesion", "cancer", "cyst", "kidney", "renal", "brain"):
        (idx,) = tok.encode(word)
        assert idx < tok.n_known, word
    assert tok.encode("Liver TUMOR") == tok.encode("liver tumour") == [tok.vocab["liver"], tok.vocab["tumour"]]
    assert tok.encode("enhancing-tumour.") == [tok.vocab["enhancing"], tok.vocab["tumour"]]
    assert tok.vocab["hepatic"] != tok.vocab["liver"]
    assert BUILTIN_VOCABULARY[0] == "<pad>"


def test_tokenizer_unknown_words_hash_deterministically() -> None:
    tok = BuiltinTokenizer(n_hash_buckets=64)
    (idx,) = tok.encode("cholangiocarcinoma")
    assert idx == tok.n_known + zlib.crc32(b"cholangiocarcinoma") % 64
    assert BuiltinTokenizer(n_hash_buckets=64).encode("cholangiocarcinoma") == [idx]
    assert tok.n_known <= idx < tok.size


def test_tokenizer_empty_and_truncation() -> None:
    tok = BuiltinTokenizer(max_length=3)
    assert tok.encode("") == [tok.vocab["<empty>"]]
    assert tok.encode("...") == [tok.vocab["<empty>"]]
    assert len(tok.encode("a b c d e f")) == 3
    ids, mask = tok(["liver", "left kidney cyst"])
    assert ids.shape == mask.shape == (2, 3)
    assert mask.tolist() == [[True, False, False], [True, True, True]]
    assert ids[0, 1:].tolist() == [tok.pad_id, tok.pad_id]


# ----------------------------------------------------------------------------------------------------------------
# Built-in encoder
# ----------------------------------------------------------------------------------------------------------------


def test_builtin_shapes_and_masks() -> None:
    enc = _builtin()
    texts = ["liver tumour", "brain", "left renal cyst with necrotic core"]
    out = enc(texts)
    assert isinstance(out, TextEmbedding)
    assert out.tokens.shape == (3, 6, 32) and out.tokens.dtype == torch.float32
    assert out.mask.dtype == torch.bool and out.mask.sum(1).tolist() == [2, 1, 6]
    assert out.pooled.shape == (3, 32)
    assert out.dim == enc.dim == 32
    assert torch.all(out.tokens[~out.mask] == 0)
    torch.testing.assert_close(out.pooled, masked_mean(out.tokens, out.mask))


def test_builtin_default_dim_and_determinism() -> None:
    torch.manual_seed(3)
    a = BuiltinTextEncoder()
    torch.manual_seed(3)
    b = BuiltinTextEncoder()
    assert a.dim == 64
    torch.testing.assert_close(a(["liver tumour"]).pooled, b(["liver tumour"]).pooled, rtol=0, atol=0)


def test_builtin_different_texts_differ() -> None:
    enc = _builtin().eval()
    pooled = enc(["liver tumour", "kidney cyst", "brain enhancing tumour", "totally unknown words"]).pooled
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(pooled[i], pooled[j], atol=1e-4), (i, j)


def test_builtin_batch_independent_of_padding() -> None:
    enc = _builtin(cache=False).eval()
    alone = enc(["liver tumour"])
    batched = enc(["liver tumour", "a large pancreatic mass in the upper region"])
    torch.testing.assert_close(batched.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.tokens[0, :2], alone.tokens[0], atol=1e-5, rtol=1e-5)


def test_builtin_is_trainable() -> None:
    enc = _builtin().train()
    assert enc.training and not enc.frozen
    loss = enc(["liver tumour", "kidney"]).pooled.square().sum()
    loss.backward()
    assert enc.embedding.weight.grad is not None and enc.embedding.weight.grad.abs().sum() > 0
    assert enc.cache_size == 0  # training mode: no cache


def test_cache_reuses_results_without_rerunning_model() -> None:
    enc = _builtin().eval()
    counter = _CountingCalls(enc)
    with torch.no_grad():
        first = enc(["liver tumour", "kidney cyst", "liver tumour"])
        second = enc(["kidney cyst", "liver tumour"])
        third = enc(["kidney cyst", "brain"])
    assert counter.calls == [["liver tumour", "kidney cyst"], ["brain"]]
    assert enc.cache_size == 3
    torch.testing.assert_close(second.pooled, first.pooled[[1, 0]], rtol=0, atol=0)
    torch.testing.assert_close(second.tokens, first.tokens[[1, 0]], rtol=0, atol=0)
    torch.testing.assert_close(third.pooled[0], first.pooled[1], rtol=0, atol=0)
    # results match an uncached run
    fresh = _builtin(cache=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(["liver tumour", "kidney cyst"]).pooled, first.pooled[:2])


def test_cache_used_for_frozen_encoder_even_with_grad_enabled() -> None:
    enc = _builtin().requires_grad_(False).eval()
    counter = _CountingCalls(enc)
    enc(["liver tumour"])
    out = enc(["liver tumour"])
    assert len(counter.calls) == 1
    assert not out.pooled.requires_grad


def test_cache_not_used_when_gradients_needed() -> None:
    enc = _builtin().eval()  # eval, trainable, grad enabled: gradients must flow, so no cache
    counter = _CountingCalls(enc)
    enc(["liver tumour"])
    out = enc(["liver tumour"])
    assert len(counter.calls) == 2 and enc.cache_size == 0
    assert out.pooled.requires_grad


def test_cache_cleared_on_train_and_to() -> None:
    enc = _builtin().eval()
    with torch.no_grad():
        enc(["liver tumour", "kidney"])
    assert enc.cache_size == 2
    enc.train()
    assert enc.cache_size == 0 and enc.training
    enc.eval()
    with torch.no_grad():
        enc(["liver tumour"])
    assert enc.cache_size == 1
    enc.to(torch.float64)
    assert enc.cache_size == 0
    with torch.no_grad():
        assert enc(["liver tumour"]).tokens.dtype == torch.float64
    enc.clear_cache()
    assert enc.cache_size == 0


def test_frozen_encoder_stays_in_eval_under_parent_train() -> None:
    enc = _builtin().requires_grad_(False)
    parent = torch.nn.ModuleDict({"text": enc, "head": torch.nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and not enc.training
    counter = _CountingCalls(enc)
    enc(["liver tumour"])
    enc(["liver tumour"])
    assert len(counter.calls) == 1


def test_bad_inputs() -> None:
    enc = _builtin()
    with pytest.raises(TypeError, match="single string"):
        enc("liver tumour")
    with pytest.raises(ValueError, match="empty"):
        enc([])
    with pytest.raises(TypeError, match="strings"):
        enc(["liver", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="num_heads"):
        BuiltinTextEncoder(dim=30, num_heads=4)


# ----------------------------------------------------------------------------------------------------------------
# Builder and Hugging Face CLIP
# ----------------------------------------------------------------------------------------------------------------


def test_build_builtin() -> None:
    enc = build_text_encoder("builtin", dim=16, num_heads=2)
    assert isinstance(enc, BuiltinTextEncoder) and enc.dim == 16


@pytest.mark.parametrize("spec", ["does/not/exist", "clip-vit-base-patch32"])
def test_build_missing_dir(spec: str) -> None:
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        build_text_encoder(spec)


def test_build_file_and_dir_without_config(tmp_path: Path) -> None:
    file = tmp_path / "model.pt"
    file.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        build_text_encoder(str(file))
    with pytest.raises(FileNotFoundError, match="no config.json.*save_pretrained"):
        build_text_encoder(str(tmp_path))


def test_open_clip_directory_explains(tmp_path: Path) -> None:
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises((ImportError, NotImplementedError), match="Hugging Face"):
        build_text_encoder(str(tmp_path))
    with pytest.raises((ImportError, NotImplementedError)):
        OpenClipTextEncoder(tmp_path)


def test_hf_missing_transformers_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object):  # noqa: ANN202
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ImportError, match=r"pip install 'lesionsam\[text\]'"):
        build_text_encoder(str(tmp_path))


_WORDS = ["liver", "tumour", "kidney", "cyst", "brain", "enhancing", "lesion", "hepatic", "renal"]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    out = tmp_path_factory.mktemp("tiny_clip")

    special = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {tok: i for i, tok in enumerate(special + _WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = tokenizers.normalizers.Lowercase()
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(str(out))

    config = transformers.CLIPTextConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=32,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
    )
    torch.manual_seed(0)
    transformers.CLIPTextModel(config).save_pretrained(str(out))
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 32
    return out


def test_hf_clip_from_local_dir(tiny_clip_dir: Path) -> None:
    enc = build_text_encoder(str(tiny_clip_dir))
    assert isinstance(enc, HFClipTextEncoder)
    assert enc.dim == 32 and enc.frozen and not enc.training
    out = enc(["liver tumour", "brain enhancing lesion", "kidney"])
    assert out.tokens.shape == (3, 5, 32)  # <bos> + 3 words + <eos>
    assert out.mask.sum(1).tolist() == [4, 5, 3]
    assert out.pooled.shape == (3, 32)
    assert not out.tokens.requires_grad and not out.pooled.requires_grad
    assert torch.all(out.tokens[~out.mask] == 0)
    torch.testing.assert_close(out.pooled, masked_mean(out.tokens, out.mask))
    assert not torch.allclose(out.pooled[0], out.pooled[1], atol=1e-4)
    assert not torch.allclose(out.pooled[0], out.pooled[2], atol=1e-4)


def test_hf_clip_cache_and_pooler(tiny_clip_dir: Path) -> None:
    enc = HFClipTextEncoder(tiny_clip_dir)
    counter = _CountingCalls(enc)
    a = enc(["liver tumour"])
    b = enc(["liver tumour", "kidney cyst"])
    assert counter.calls == [["liver tumour"], ["kidney cyst"]]
    torch.testing.assert_close(b.pooled[0], a.pooled[0], rtol=0, atol=0)

    pooler = HFClipTextEncoder(tiny_clip_dir, pooling="pooler", cache=False)
    p = pooler(["liver tumour"])
    assert p.pooled.shape == (1, 32)
    assert not torch.allclose(p.pooled, a.pooled)
    with pytest.raises(ValueError, match="pooling"):
        HFClipTextEncoder(tiny_clip_dir, pooling="cls")


def test_hf_clip_unfrozen_is_trainable(tiny_clip_dir: Path) -> None:
    enc = HFClipTextEncoder(tiny_clip_dir, freeze=False).train()
    assert enc.training and not enc.frozen
    enc(["liver tumour"]).pooled.sum().backward()
    assert any(p.grad is not None for p in enc.parameters())


def test_refsam3d_runs_on_a_local_hf_clip_text_model(tiny_clip_dir: Path) -> None:
    """RefSAM3D with ``model.options.text_encoder=DIR``: built through the registry, texts select different masks."""
    from lesionsam.models import ModelConfig, Prompts, build_model

    model = build_model(
        ModelConfig.from_preset("tiny", method="refsam3d", options={"text_encoder": str(tiny_clip_dir)})
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("adapters.", "ref_decoder.", "cross_attn.", "text_projector.")):
                p.normal_(0, 0.1)
    model.eval()
    image = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        enc = model.encode(image)
        a = model.decode(enc, Prompts(text=["liver tumour"])).logits
        b = model.decode(enc, Prompts(text=["kidney"])).logits
    assert a.shape == (1, 1, 64, 64, 64) and not torch.allclose(a, b)
    assert not any(p.requires_grad for p in model.text.parameters())  # the CLIP text model stays frozen
