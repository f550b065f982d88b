"""Multi-head self-attention of the SAM-Med3D image encoder, exactly as the official weights expect.

Two behaviours of the official 3D code are reproduced because the released weights learned them
(``shared/spec/sam_med3d_attention.md`` has the derivation):

1. **Relative-position terms.** For a cubic window of side ``S``, query ``(qd, qh, qw)`` and key
   ``(kd, kh, kw)``, with ``q`` the unscaled query of one head and ``R_d, R_h, R_w`` the tables
   ``rel_pos_d/h/w`` of shape ``(2S-1, head_dim)`` indexed by ``R[a - b + S - 1]``, the logit
   ``s·q[i]·k[j]`` (``s = head_dim**-0.5``) receives::

       f1 = q[qd, qh, qw] · R_d[qd - kw]
       f2 = q[qd, qh, kd] · R_h[qh - kw]
       f3 = q[qd, qh, kh] · R_w[kh - kw]

   (not the textbook per-axis decomposition of 2D SAM).
2. **Windowed blocks attend to padding.** The token grid is zero-padded *after* ``norm1`` to a multiple
   of the window side, so padded tokens enter attention with ``q = b_q, k = b_k, v = b_v`` (the qkv
   bias), and in ``f2``/``f3`` above wherever ``kd`` or ``kh`` falls in the padding.

Two implementations are provided:

* ``"naive"`` materialises the padded windows and the full ``S³ × S³`` attention, as the official code
  does. It is the reference in tests and benchmarks.
* ``"fast"`` (default) computes attention for real queries only, over the real keys plus one *virtual
  key* per query that carries the total softmax mass of all padded keys (key 0, value ``b_v``, bias
  ``s·q·b_k + log(A − B)`` where ``A``/``B`` are the factorised rel-pos partition sums over the whole
  window and over its real sub-box). It never builds a padded token, and runs through
  :func:`torch.nn.functional.scaled_dot_product_attention` with the rel-pos bias as a float mask.
  It matches ``"naive"`` to float tolerance.

The fast path is exportable (``torch.export``, ``torch.onnx.export(..., dynamo=True)``) for a static crop: every
branch and slice depends only on the grid and window sides (fixed by the crop size, so the exporters specialise
them), intermediates have at most 7 dimensions, and when exporting the attention output is copied before its reshape
(see ``_attend_windows``). The padding is folded exactly as above, never masked.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionsam.utils.options import look_up_option

ATTENTION_IMPLS = ("fast", "naive")


def rel_pos_table(rel_pos: Tensor, size: int) -> Tensor:
    """Relative-position lookup ``T[a, b] = rel_pos[a - b + size - 1]`` for a window side ``size``.

    Args:
        rel_pos: (L, C) learned table. If ``L != 2*size - 1`` it is resized linearly first (as the
            official ``get_rel_pos`` does).
        size: window side in tokens.

    Returns:
        (size, size, C) tensor.
    """
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()
    idx = torch.arange(size, device=rel_pos.device)
    return rel_pos[idx[:, None] - idx[None, :] + size - 1]


class Attention3D(nn.Module):
    """Multi-head self-attention over a cubic token grid, with SAM-Med3D relative positions.

    The module owns the official parameters (``qkv``, ``proj``, ``rel_pos_d/h/w``) and performs the
    window partition itself, so that the fast path never materialises padded tokens.

    Args:
        dim: token width C.
        num_heads: attention heads; must divide ``dim``.
        window_size: side S of the cubic attention window in tokens; 0 for global attention.
        grid_size: side G of the token grid (``img_size // patch_size``); sizes the global blocks'
            relative-position tables (2G - 1 rows).
        qkv_bias: learn a bias for q, k, v (official: True).
        impl: ``"fast"`` or ``"naive"`` (see the module docstring).
    """

    def __init__(
        self, *, dim: int, num_heads: int, window_size: int, grid_size: int, qkv_bias: bool = True, impl: str = "fast"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide dim {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.impl = look_up_option(impl, ATTENTION_IMPLS, what="attention implementation")
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        side = window_size if window_size > 0 else grid_size
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * side - 1, self.head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * side - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * side - 1, self.head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """Attend over a token grid.

        Args:
            x: (B, D, H, W, C) tokens after ``norm1``, with D == H == W.

        Returns:
            (B, D, H, W, C) attention output after ``proj`` (padding already removed).
        """
        if not (x.shape[1] == x.shape[2] == x.shape[3]):
            raise ValueError(f"SAM-Med3D attention needs a cubic token grid, got {tuple(x.shape[1:4])}")
        if self.impl == "naive":
            return self.proj(self._forward_naive(x))
        return self.proj(self._forward_fast(x))

    # ------------------------------------------------------------------ helpers
    def _bias_qkv(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The qkv bias split per head: three (heads, head_dim) tensors (zeros without a bias)."""
        if self.qkv.bias is None:
            z = torch.zeros(self.num_heads, self.head_dim, dtype=dtype, device=device)
            return z, z, z
        b = self.qkv.bias.to(dtype).view(3, self.num_heads, self.head_dim)
        return b[0], b[1], b[2]

    def _qkv(self, xw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, *grid, C) → q, k, v of shape (N, heads, L, head_dim)."""
        n, c = xw.shape[0], xw.shape[-1]
        qkv = self.qkv(xw.reshape(n, -1, c)).reshape(n, -1, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _side(self, grid: int) -> int:
        return self.window_size if self.window_size > 0 else grid

    # ------------------------------------------------------------------ naive (official) path
    def _forward_naive(self, x: Tensor) -> Tensor:
        b, g = x.shape[0], x.shape[1]
        s = self._side(g)
        pad = (s - g % s) % s
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad, 0, pad))
        windows = _partition(x, (s, s, s))  # (B*nw, S, S, S, C)
        q, k, v = self._qkv(windows)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + _official_rel_pos_bias_naive(q, self.rel_pos_d, self.rel_pos_h, self.rel_pos_w, s)
        out = attn.softmax(dim=-1) @ v  # (N, heads, S³, hd)
        out = out.transpose(1, 2).reshape(windows.shape[0], s, s, s, -1)
        out = _unpartition(out, b, (g + pad,) * 3)
        return out[:, :g, :g, :g].contiguous()

    # ------------------------------------------------------------------ fast (exact fold) path
    def _forward_fast(self, x: Tensor) -> Tensor:
        b, g = x.shape[0], x.shape[1]
        s = self._side(g)
        full, rest = divmod(g, s)
        # Along each axis: `full` whole windows of side s, then one partial window of extent `rest`.
        parts = [(0, full * s, s)] if full else []
        if rest:
            parts.append((full * s, g, rest))
        # Rel-pos terms and partition sums in at least float32, whatever the compute dtype.
        ct = torch.promote_types(x.dtype, torch.float32)
        tables = [rel_pos_table(t.to(ct), s) for t in (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w)]
        pieces: dict[tuple[int, int, int], Tensor] = {}
        for (i, pd), (j, ph), (k, pw) in itertools.product(enumerate(parts), repeat=3):
            box = x[:, pd[0] : pd[1], ph[0] : ph[1], pw[0] : pw[1]]
            ext = (pd[2], ph[2], pw[2])
            windows = _partition(box, ext)
            out = self._attend_windows(windows, ext, s, tables)
            pieces[(i, j, k)] = _unpartition(out, b, box.shape[1:4])
        n = len(parts)
        return torch.cat(
            [
                torch.cat([torch.cat([pieces[(i, j, k)] for k in range(n)], dim=3) for j in range(n)], dim=2)
                for i in range(n)
            ],
            dim=1,
        )

    def _attend_windows(self, windows: Tensor, ext: tuple[int, int, int], s: int, tables: list[Tensor]) -> Tensor:
        """Attention for windows whose real tokens fill the corner box ``ext`` of an S³ window.

        Args:
            windows: (N, ed, eh, ew, C) real tokens of N windows.
            ext: (ed, eh, ew) real extent per axis (each ≤ s).
            s: window side.
            tables: rel-pos lookups (s, s, hd) for d, h, w in float32.

        Returns:
            (N, ed, eh, ew, C) attention output before ``proj``.
        """
        n = windows.shape[0]
        ed, eh, ew = ext
        q, k, v = self._qkv(windows)  # (N, h, L, hd)
        bq, bk, bv = self._bias_qkv(q.dtype, q.device)
        td, th, tw = tables
        ct = td.dtype
        qg = q.to(ct).reshape(n, self.num_heads, ed, eh, ew, self.head_dim)
        # f1[a, b, c, kw] = q[a, b, c] · R_d[a - kw]
        f1 = torch.einsum("nhabcx,akx->nhabck", qg, td[:ed])
        # The query vector at (a, b, t) for t over the whole window side (padding → b_q).
        if ew < s:
            q_pad = bq.to(ct)[None, :, None, None, None, :].expand(n, -1, ed, eh, s - ew, -1)
            qt = torch.cat([qg, q_pad], dim=4)
        else:
            qt = qg
        # f2[a, b, kd, kw] = q[a, b, kd] · R_h[b - kw];   f3[a, b, kh, kw] = q[a, b, kh] · R_w[kh - kw]
        f2 = torch.einsum("nhabtx,bkx->nhabtk", qt, th[:eh])
        f3 = torch.einsum("nhabtx,tkx->nhabtk", qt, tw)
        # Broadcast in 7-D (window and head merged by views; TensorRT allows at most 8 dimensions).
        bias = (
            f1[..., :ew].flatten(0, 1)[:, :, :, :, None, None, :]
            + f2.flatten(0, 1)[:, :, :, None, :ed, None, :ew]
            + f3.flatten(0, 1)[:, :, :, None, None, :eh, :ew]
        ).reshape(n, self.num_heads, ed * eh * ew, ed * eh * ew)
        if (ed, eh, ew) != (s, s, s):
            log_pad = _log_padded_mass(f1, f2, f3, ext, s)
            virtual = self.scale * torch.einsum("nhabcx,hx->nhabc", qg, bk.to(ct)) + log_pad
            bias = torch.cat([bias, virtual.reshape(n, self.num_heads, -1, 1)], dim=-1)
            k = torch.cat([k, k.new_zeros(n, self.num_heads, 1, self.head_dim)], dim=2)
            v = torch.cat([v, bv[None, :, None, :].expand(n, -1, 1, -1)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.transpose(1, 2)
        if torch.compiler.is_exporting():
            # A real copy when exporting: the ONNX exporter's decomposition of SDPA returns (N, h, L, hd) in another
            # memory layout than the CPU kernel traced here, and a view recorded from the traced strides fails there.
            out = out.clone(memory_format=torch.contiguous_format)
        return out.reshape(n, ed, eh, ew, -1)


def _log_padded_mass(f1: Tensor, f2: Tensor, f3: Tensor, ext: tuple[int, int, int], s: int) -> Tensor:
    """log Σ over the padded keys of exp(f1 + f2 + f3), per real query.

    The padded keys of a window whose real tokens fill the corner box ``ext`` are split into three
    disjoint sets — ``kw ≥ ew``; ``kw < ew, kd ≥ ed``; ``kw < ew, kd < ed, kh ≥ eh`` — and the sum over
    each factorises over (kd, kh) for every kw. Summing positive terms only (rather than the spec's
    ``log(A - B)``) avoids cancellation when the real box holds almost all of the mass.

    Args:
        f1: (N, h, ed, eh, ew, S) = q[a, b, c] · R_d[a - kw].
        f2: (N, h, ed, eh, S, S) = q[a, b, kd] · R_h[b - kw], indexed [.., kd, kw].
        f3: (N, h, ed, eh, S, S) = q[a, b, kh] · R_w[kh - kw], indexed [.., kh, kw].

    Returns:
        (N, h, ed, eh, ew) log-masses.
    """
    ed, eh, ew = ext

    def lse(t: Tensor, dim: int) -> Tensor:
        return torch.logsumexp(t, dim=dim)

    def over_kw(l2: Tensor, l3: Tensor, kw: slice) -> Tensor:
        # l2, l3: (N, h, ed, eh, K) for the kw range; f1 broadcast over the query's c axis.
        return lse(f1[..., kw] + l2[:, :, :, :, None, :] + l3[:, :, :, :, None, :], dim=-1)

    l2_all, l3_all = lse(f2, dim=4), lse(f3, dim=4)  # (N, h, ed, eh, S) per kw
    real, pad = slice(0, ew), slice(ew, s)
    terms = []
    if ew < s:
        terms.append(over_kw(l2_all[..., pad], l3_all[..., pad], pad))
    if ed < s:
        terms.append(over_kw(lse(f2[..., ed:, real], dim=4), l3_all[..., real], real))
    if eh < s:
        terms.append(over_kw(lse(f2[..., :ed, real], dim=4), lse(f3[..., eh:, real], dim=4), real))
    return torch.logsumexp(torch.stack(terms), dim=0)


def _official_rel_pos_bias_naive(q: Tensor, rel_d: Tensor, rel_h: Tensor, rel_w: Tensor, s: int) -> Tensor:
    """Reference: the official 7-D broadcast of the three rel-pos terms, for full S³ windows.

    Args:
        q: (N, heads, S³, hd) unscaled queries.

    Returns:
        (N, heads, S³, S³) additive bias.
    """
    n, h = q.shape[:2]
    rq = q.reshape(n * h, s, s, s, -1)
    td, th, tw = (rel_pos_table(t, s).to(q.dtype) for t in (rel_d, rel_h, rel_w))
    rd = torch.einsum("bdhwc,dkc->bdhwk", rq, td)
    rh = torch.einsum("bdhwc,hkc->bdhwk", rq, th)
    rw = torch.einsum("bdhwc,wkc->bdhwk", rq, tw)
    bias = rd[:, :, :, :, None, None] + rh[:, :, :, None, :, None] + rw[:, :, :, None, None, :]
    return bias.reshape(n, h, s**3, s**3)


def _partition(x: Tensor, ext: tuple[int, int, int]) -> Tensor:
    """(B, D, H, W, C) → (B·nd·nh·nw, ed, eh, ew, C); each of D, H, W must be a multiple of its extent.

    At most 6-D intermediates (a 3D window partition written as one 8-D reshape exceeds TensorRT's limit),
    and no copy at all when the box is a single window.
    """
    b, d, h, w, c = x.shape
    ed, eh, ew = ext
    nd, nh, nw = d // ed, h // eh, w // ew
    if nd == nh == nw == 1:
        return x
    x = x.reshape(b * nd, ed, nh, eh, nw, ew * c).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * nd * nh * nw, ed, eh, ew, c)


def _unpartition(windows: Tensor, b: int, size: tuple[int, int, int] | torch.Size) -> Tensor:
    """Inverse of :func:`_partition`: (B·nd·nh·nw, ed, eh, ew, C) → (B, D, H, W, C)."""
    d, h, w = (int(v) for v in size)
    _, ed, eh, ew, c = windows.shape
    nd, nh, nw = d // ed, h // eh, w // ew
    if nd == nh == nw == 1:
        return windows
    x = windows.reshape(b * nd, nh, nw, ed, eh, ew * c).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d, h, w, c)
