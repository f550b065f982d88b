"""Text encoders for text-referred segmentation (RefSAM3D).

RefSAM3D (Gao & Lu, 2024, "RefSAM3D: Adapting SAM with Cross-modal Reference for 3D Medical Image Segmentation")
segments from a text prompt such as ``"liver tumour"``. The prompt is encoded by a CLIP-style text encoder; the
word/token embeddings are then mapped by the method's cross-modal projector into prompt tokens. This module holds
only the text side:

* :class:`TextEncoder` -- the common interface: ``forward(texts) -> TextEmbedding``, with a per-text cache.
* :class:`BuiltinTextEncoder` -- a small word-level tokenizer over a fixed medical vocabulary plus a 2-layer
  transformer; no files needed. Serves tests and the demo, trainable or frozen.
* :class:`HFClipTextEncoder` -- any Hugging Face CLIP text model saved in a local directory (optional dependency
  ``transformers``; install with ``pip install 'lesionsam[text]'``).
* :class:`OpenClipTextEncoder` -- placeholder for open_clip checkpoints; not available in this installation (see
  its docstring).
* :func:`build_text_encoder` -- ``"builtin"`` or a local directory.

Nothing is downloaded at run time: Hugging Face loading uses ``local_files_only=True``.

Conventions
-----------
* ``tokens``: float ``(B, T, D)``, one row per token, ``T`` = the longest real token count in the batch; padded
  positions hold zeros.
* ``mask``: bool ``(B, T)``, True for a real token (special tokens such as CLIP's BOS/EOS count as real).
* ``pooled``: float ``(B, D)``, the sentence embedding = masked mean of ``tokens`` over the real tokens (the
  Hugging Face encoder can use the model's ``pooler_output`` instead, see ``pooling``).

Caching
-------
The same few class texts repeat every training step, so encoded prompts are cached per distinct text (a dict
``text -> (tokens (T_i, D), pooled (D,))`` of detached tensors on the module's device) whenever the result cannot
change and needs no gradient: the module is in eval mode **and** either it is frozen (no parameter requires grad)
or autograd is disabled. The cache is cleared by ``train()``/``eval()`` and by any ``.to()``/``.cuda()``/
``.float()`` (via ``_apply``), and can be disabled with ``cache=False`` or cleared with :meth:`clear_cache`.
A frozen encoder stays in eval mode when its parent calls ``train()`` (it is a fixed function: no dropout), so
its cache keeps working during training.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "BUILTIN_VOCABULARY",
    "SPELLING_VARIANTS",
    "BuiltinTextEncoder",
    "BuiltinTokenizer",
    "TextEmbedding",
    "TextEncoder",
    "masked_mean",
]


@dataclass
class TextEmbedding:
    """Encoded text prompts.

    Attributes:
        tokens: float ``(B, T, D)`` word/token embeddings; zeros at padded positions.
        mask: bool ``(B, T)``, True for a real token.
        pooled: float ``(B, D)`` sentence embedding (masked mean of ``tokens`` unless the encoder says otherwise).
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    @property
    def dim(self) -> int:
        """Embedding size ``D``."""
        return int(self.tokens.shape[-1])


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``tokens`` (B, T, D) over the positions where ``mask`` (B, T) bool is True -> (B, D).

    A row without any real token gives zeros (no division by zero).
    """
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Common interface of the text encoders: ``forward(texts) -> TextEmbedding`` with a per-text cache.

    Subclasses set ``self.dim`` and implement :meth:`_encode`. See the module docstring for the tensor
    conventions and the caching rule.

    Args:
        dim: embedding size ``D``.
        cache: cache encoded prompts per distinct text when that is safe (eval mode, and frozen or no autograd).
    """

    dim: int

    def __init__(self, *, dim: int, cache: bool = True) -> None:
        super().__init__()
        self.dim = int(dim)
        self.cache_enabled = bool(cache)
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    # -- to implement ------------------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Run the model on a batch of texts.

        Returns:
            ``tokens`` float (B, T, D), ``mask`` bool (B, T) and an optional ``pooled`` (B, D); ``None`` means the
            masked mean of the tokens.
        """
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        """True when no parameter requires grad."""
        return not any(p.requires_grad for p in self.parameters())

    @property
    def cache_size(self) -> int:
        """Number of distinct texts currently cached."""
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forget every cached prompt."""
        self._cache.clear()

    def _cache_active(self) -> bool:
        return self.cache_enabled and not self.training and (self.frozen or not torch.is_grad_enabled())

    def train(self, mode: bool = True) -> TextEncoder:
        """Set the training mode and clear the cache; a frozen encoder stays in eval mode (a fixed function)."""
        self.clear_cache()
        return super().train(mode and not self.frozen)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> TextEncoder:  # type: ignore[override]
        # Every .to(), .cuda(), .float(), ... goes through _apply: cached tensors would be on the old device/dtype.
        self.clear_cache()
        return super()._apply(fn, recurse)

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, texts: Sequence[str]) -> TextEmbedding:
        """Encode a batch of texts.

        Args:
            texts: ``B`` strings (a list or tuple, not a single string).

        Returns:
            :class:`TextEmbedding` with ``tokens`` (B, T, D), ``mask`` (B, T) bool and ``pooled`` (B, D).
        """
        if isinstance(texts, str):
            raise TypeError(f"texts must be a sequence of strings, got a single string {texts!r}; pass [{texts!r}]")
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: pass at least one text prompt")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must all be strings, got {type(bad[0]).__name__}: {bad[0]!r}")

        if not self._cache_active():
            return self._run(texts)[0]

        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            _, per_text = self._run(missing)
            for text, (tok, pooled) in zip(missing, per_text, strict=True):
                self._cache[text] = (tok.detach(), pooled.detach())
        return self._assemble([self._cache[t] for t in texts])

    def _run(self, texts: list[str]) -> tuple[TextEmbedding, list[tuple[Tensor, Tensor]]]:
        """Encode ``texts``; return the batch and the per-text (tokens (T_i, D), pooled (D,)) pieces."""
        tokens, mask, pooled = self._encode(texts)
        if pooled is None:
            pooled = masked_mean(tokens, mask)
        # Per text: its real tokens. Padding-aware encoders give the same values whatever the batch, so trimming
        # then re-padding reproduces the batch result exactly; we assemble from the pieces in both paths.
        pieces = [(tokens[i][mask[i]], pooled[i]) for i in range(len(texts))]
        return self._assemble(pieces), pieces

    @staticmethod
    def _assemble(pieces: list[tuple[Tensor, Tensor]]) -> TextEmbedding:
        """Pad per-text pieces into a batch: tokens (B, T, D) with zeros at padding, mask (B, T), pooled (B, D)."""
        first = pieces[0][0]
        length = max(int(tok.shape[0]) for tok, _ in pieces)
        tokens = first.new_zeros((len(pieces), length, first.shape[-1]))
        mask = torch.zeros((len(pieces), length), dtype=torch.bool, device=first.device)
        rows = []
        for i, (tok, pooled) in enumerate(pieces):
            n = int(tok.shape[0])
            tokens[i, :n] = tok
            mask[i, :n] = True
            rows.append(pooled)
        return TextEmbedding(tokens=tokens, mask=mask, pooled=torch.stack(rows))


# ---------------------------------------------------------------------------------------------------------------
# Built-in tokenizer + encoder
# ---------------------------------------------------------------------------------------------------------------

#: Fixed vocabulary of the built-in tokenizer; the index in this tuple is the token id. ``<pad>`` (0) pads;
#: ``<empty>`` (1) stands for an empty text. Words not listed hash into ``n_hash_buckets`` extra rows.
BUILTIN_VOCABULARY: tuple[str, ...] = (
    "<pad>",
    "<empty>",
    # lesion kinds
    "tumour",
    "tumours",
    "lesion",
    "lesions",
    "cancer",
    "carcinoma",
    "neoplasm",
    "mass",
    "cyst",
    "cysts",
    "nodule",
    "nodules",
    "metastasis",
    "metastases",
    "glioma",
    "adenoma",
    "haemorrhage",
    "oedema",
    "necrosis",
    "necrotic",
    "enhancing",
    "non",
    "core",
    "whole",
    "malignant",
    "benign",
    "primary",
    "secondary",
    # organs and their adjectives
    "liver",
    "hepatic",
    "kidney",
    "kidneys",
    "renal",
    "brain",
    "cerebral",
    "lung",
    "lungs",
    "pulmonary",
    "pancreas",
    "pancreatic",
    "colon",
    "colorectal",
    "bowel",
    "prostate",
    "breast",
    "spleen",
    "splenic",
    "bone",
    "lymph",
    "node",
    "nodes",
    "adrenal",
    "bladder",
    "stomach",
    "gastric",
    "organ",
    # anatomy / descriptors / function words
    "left",
    "right",
    "upper",
    "lower",
    "small",
    "large",
    "the",
    "a",
    "an",
    "of",
    "in",
    "and",
    "with",
    "segment",
    "region",
)

#: Spelling variants mapped to the form that is in :data:`BUILTIN_VOCABULARY` (US -> UK), so "tumor" and
#: "tumour" get the same id.
SPELLING_VARIANTS: dict[str, str] = {
    "tumor": "tumour",
    "tumors": "tumours",
    "edema": "oedema",
    "hemorrhage": "haemorrhage",
}

_WORD = re.compile(r"[a-z0-9]+")


class BuiltinTokenizer:
    """Lower-case word-level tokenizer over :data:`BUILTIN_VOCABULARY`.

    Words are the runs of ``[a-z0-9]`` after lower-casing (punctuation and hyphens split words). Spelling variants
    are normalised by :data:`SPELLING_VARIANTS`. A word outside the vocabulary gets id
    ``len(vocabulary) + crc32(word) % n_hash_buckets``: deterministic across runs and machines, so any text works.
    An empty text becomes the single ``<empty>`` token; texts are truncated to ``max_length`` tokens.

    Args:
        n_hash_buckets: number of extra rows for unknown words (>= 1).
        max_length: most tokens per text.
    """

    def __init__(self, *, n_hash_buckets: int = 256, max_length: int = 32) -> None:
        if n_hash_buckets < 1:
            raise ValueError(f"n_hash_buckets must be >= 1, got {n_hash_buckets}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.vocab: dict[str, int] = {word: i for i, word in enumerate(BUILTIN_VOCABULARY)}
        self.n_hash_buckets = n_hash_buckets
        self.max_length = max_length

    @property
    def pad_id(self) -> int:
        return self.vocab["<pad>"]

    @property
    def n_known(self) -> int:
        """Number of vocabulary words (ids below this are known words)."""
        return len(self.vocab)

    @property
    def size(self) -> int:
        """Number of embedding rows needed: vocabulary + hash buckets."""
        return self.n_known + self.n_hash_buckets

    def words(self, text: str) -> list[str]:
        """Lower-cased, normalised words of ``text``."""
        return [SPELLING_VARIANTS.get(w, w) for w in _WORD.findall(text.lower())]

    def word_id(self, word: str) -> int:
        """Id of one (normalised) word: its vocabulary index or its hash bucket."""
        if word in self.vocab:
            return self.vocab[word]
        return self.n_known + zlib.crc32(word.encode("utf-8")) % self.n_hash_buckets

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (at least one, at most ``max_length``)."""
        ids = [self.word_id(w) for w in self.words(text)][: self.max_length]
        return ids or [self.vocab["<empty>"]]

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Batch-encode: ids long (B, T) padded with ``pad_id`` and mask bool (B, T)."""
        encoded = [self.encode(t) for t in texts]
        length = max(len(ids) for ids in encoded)
        ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.bool)
        for i, row in enumerate(encoded):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask


class BuiltinTextEncoder(TextEncoder):
    """Small built-in text encoder: :class:`BuiltinTokenizer` + embedding + learned positions + transformer + norm.

    Token embedding ``(vocab + buckets, D)`` plus a learned position embedding ``(max_length, D)``, then
    ``num_layers`` pre-norm ``nn.TransformerEncoderLayer`` (batch_first, padding masked via
    ``src_key_padding_mask``) and a final ``LayerNorm``. Weights come from torch's RNG, so the encoder is
    deterministic given ``torch.manual_seed``. Trainable by default; call ``requires_grad_(False)`` to freeze it.

    Args:
        dim: embedding size ``D`` (divisible by ``num_heads``).
        num_layers: transformer layers.
        num_heads: attention heads.
        mlp_ratio: feed-forward width = ``mlp_ratio * dim``.
        dropout: dropout inside the transformer layers.
        n_hash_buckets: extra embedding rows for unknown words.
        max_length: most tokens per text.
        cache: see :class:`TextEncoder`.
    """

    def __init__(
        self,
        *,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        n_hash_buckets: int = 256,
        max_length: int = 32,
        cache: bool = True,
    ) -> None:
        if dim < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim must be a positive multiple of num_heads, got dim={dim}, num_heads={num_heads}")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        super().__init__(dim=dim, cache=cache)
        self.tokenizer = BuiltinTokenizer(n_hash_buckets=n_hash_buckets, max_length=max_length)
        self.embedding = nn.Embedding(self.tokenizer.size, dim, padding_idx=self.tokenizer.pad_id)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=int(mlp_ratio * dim),
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def _encode(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        ids, mask = self.tokenizer(texts)
        ids, mask = ids.to(self.embedding.weight.device), mask.to(self.embedding.weight.device)
        x = self.embedding(ids) + self.position[: ids.shape[1]]
        x = self.transformer(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        return x, mask, None
