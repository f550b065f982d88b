"""The exact fast window attention against the naive (official, padded) reference."""

from __future__ import annotations

import pytest
import torch

from lesionsam.models.backbone.attention import Attention3D, _official_rel_pos_bias_naive, rel_pos_table


def _randomised_attention(dim: int, heads: int, window: int, grid: int, seed: int) -> Attention3D:
    torch.manual_seed(seed)
    attn = Attention3D(dim=dim, num_heads=heads, window_size=window, grid_size=grid)
    with torch.no_grad():
        for name, p in attn.named_parameters():
            # ViT-scale weights; large rel-pos tables and qkv biases so the padded keys carry real mass.
            p.normal_(0.0, dim**-0.5 if name.endswith("weight") else 0.5)
    return attn


def _run(attn: Attention3D, x: torch.Tensor, impl: str) -> torch.Tensor:
    attn.impl = impl
    return attn(x)


@pytest.mark.parametrize(
    ("grid", "window"),
    [
        (8, 14),  # the official case: an 8³ grid padded into one 14³ window
        (4, 3),  # window smaller than the grid: 8 windows, partial ones at the far faces
        (5, 2),  # several partial windows per axis
        (6, 3),  # windows tile the grid exactly: no padding at all
        (7, 4),
        (4, 0),  # global attention
    ],
)
def test_fast_matches_naive_padded_reference(grid: int, window: int) -> None:
    attn = _randomised_attention(dim=48, heads=3, window=window, grid=grid, seed=grid * 10 + window)
    x = torch.randn(2, grid, grid, grid, 48)
    with torch.no_grad():
        naive = _run(attn, x, "naive")
        fast = _run(attn, x, "fast")
    assert fast.shape == naive.shape == x.shape
    torch.testing.assert_close(fast, naive, atol=1e-4, rtol=1e-4)
    assert naive.abs().max() > 1.0  # outputs of real magnitude, not a trivially small comparison


def test_fast_matches_naive_with_extreme_weights_in_float64() -> None:
    """Exactness (not just tolerance): in float64 both paths agree to round-off even with huge logits."""
    torch.manual_seed(0)
    attn = Attention3D(dim=12, num_heads=2, window_size=3, grid_size=4).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.8)
    x = torch.randn(1, 4, 4, 4, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(_run(attn, x, "fast"), _run(attn, x, "naive"), atol=1e-9, rtol=1e-9)


def test_padding_really_matters_in_the_reference() -> None:
    """Guard against a vacuous comparison: ignoring the padded keys changes the output."""
    attn = _randomised_attention(dim=48, heads=3, window=14, grid=8, seed=1)
    x = torch.randn(1, 8, 8, 8, 48)
    with torch.no_grad():
        naive = _run(attn, x, "naive")
        attn.window_size = 0  # plain global attention over the 512 real tokens, no padding
        attn.rel_pos_d.data = attn.rel_pos_d.data[6:21]
        attn.rel_pos_h.data = attn.rel_pos_h.data[6:21]
        attn.rel_pos_w.data = attn.rel_pos_w.data[6:21]
        unpadded = _run(attn, x, "fast")
    assert (naive - unpadded).abs().max() > 1e-2


def test_fast_gradients_match_naive() -> None:
    attn = _randomised_attention(dim=24, heads=2, window=3, grid=4, seed=3)
    x = torch.randn(1, 4, 4, 4, 24)
    grads = {}
    for impl in ("naive", "fast"):
        attn.zero_grad()
        xi = x.clone().requires_grad_(True)
        (_run(attn, xi, impl) ** 2).sum().backward()
        grads[impl] = [xi.grad.clone()] + [p.grad.clone() for p in attn.parameters()]
    for g_fast, g_naive in zip(grads["fast"], grads["naive"], strict=True):
        torch.testing.assert_close(g_fast, g_naive, atol=2e-3, rtol=1e-3)


def test_official_rel_pos_semantics_formula() -> None:
    """The naive bias equals the spec's f1 + f2 + f3 written out index by index."""
    torch.manual_seed(0)
    s, hd = 3, 4
    q = torch.randn(1, 1, s**3, hd)
    rd, rh, rw = (torch.randn(2 * s - 1, hd) for _ in range(3))
    bias = _official_rel_pos_bias_naive(q, rd, rh, rw, s)[0, 0]
    qg = q.reshape(s, s, s, hd)
    for qd, qh, qw, kd, kh, kw in [(0, 1, 2, 2, 0, 1), (2, 2, 0, 1, 2, 0), (1, 0, 1, 0, 1, 2)]:
        f1 = qg[qd, qh, qw] @ rd[qd - kw + s - 1]
        f2 = qg[qd, qh, kd] @ rh[qh - kw + s - 1]
        f3 = qg[qd, qh, kh] @ rw[kh - kw + s - 1]
        i = (qd * s + qh) * s + qw
        j = (kd * s + kh) * s + kw
        torch.testing.assert_close(bias[i, j], f1 + f2 + f3)


def test_rel_pos_table_indexing_and_resize() -> None:
    table = torch.arange(5.0)[:, None]  # 2*3-1 rows
    t = rel_pos_table(table, 3)
    assert t.shape == (3, 3, 1)
    assert t[2, 0, 0] == 4.0 and t[0, 2, 0] == 0.0 and t[1, 1, 0] == 2.0
    assert rel_pos_table(table, 4).shape == (4, 4, 1)  # linear resize to 7 rows


def test_non_cubic_grid_is_refused() -> None:
    attn = Attention3D(dim=8, num_heads=2, window_size=2, grid_size=4)
    with pytest.raises(ValueError, match="cubic token grid"):
        attn(torch.randn(1, 4, 4, 3, 8))


def test_unknown_impl_is_refused_with_suggestion() -> None:
    with pytest.raises(ValueError, match="Did you mean 'fast'"):
        Attention3D(dim=8, num_heads=2, window_size=2, grid_size=4, impl="fats")
