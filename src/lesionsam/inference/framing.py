"""Choosing a lesion's frame when it starts: the session's usual grid, or a zoomed view for a small lesion.

:func:`frame_lesion` takes a lesion's state as its prompts were given (on the usual canonical grid, not yet
segmented) and returns it *framed*: unchanged on the usual grid, or moved into a zoomed view
(:mod:`lesionsam.inference.zoom`) with its clicks, box bound and first mask prompt on the view's grid. Only the
lesion's first prompt decides (its box's extent, or the first positive click's first pass), so that prompts given one
after another and the same prompts given at once frame the lesion alike.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lesionsam.data.io import Volume
from lesionsam.data.transforms import Preprocessed
from lesionsam.inference.boxes import Box, box_prompt
from lesionsam.inference.session_state import Engine, LesionState
from lesionsam.inference.windows import (
    ChainState,
    EmbeddingCache,
    LesionMap,
    WindowRunner,
    lesion_probability,
)
from lesionsam.inference.zoom import ZoomView, extent_mm, view_prior, zoom_view
from lesionsam.utils.components import bounding_box


def frame_lesion(
    state: LesionState,
    *,
    engine: Engine,
    runner: WindowRunner,
    raw: Volume | None,
    cache: EmbeddingCache,
    text: str | None,
    box_prior_logit: float | None,
) -> LesionState:
    """``state`` framed (``framed=True``): zoomed when the engine's zoom policy asks for it, else as it is.

    Args:
        state: a lesion's first state, its coordinates on ``runner``'s (the usual) grid.
        engine: the session's engine (its ``zoom`` policy, threshold, model).
        runner: the window engine on the usual grid; its first pass runs with ``cache`` (the lesion's own).
        raw: the input image the view is resampled from (None: the usual canonical image).
    """
    policy = engine.zoom
    if policy is None or state.framed or state.center is None:
        return replace(state, framed=True)
    pre = runner.pre
    spacing = float(min(pre.grid.spacing))
    window_mm = runner.crop * spacing
    first = state.prompts[0] if state.prompts else {}
    if first.get("kind") == "box":
        box = Box(lo=tuple(first["lo"]), hi=tuple(first["hi"]))  # type: ignore[arg-type]
        lo, hi = np.asarray(box.lo, float), np.asarray(box.hi, float)
        side = (hi - lo + 1.0) * np.asarray(pre.source.spacing, float)
        factor = policy.factor(float(side.max()), window_mm=window_mm, spacing_mm=spacing)
        if factor <= 1.0:
            return replace(state, framed=True)
        view = zoom_view(runner, engine.preprocessor, raw, pre.source.index_to_world((lo + hi) / 2.0), factor)
        return _boxed_in(state, box, view, engine, box_prior_logit, pre)
    click = np.asarray(state.center, dtype=float)
    if policy.first == "zoomed":
        zoomed = _zoomed_first(state, click, engine=engine, runner=runner, raw=raw, text=text)
        if zoomed is not None:
            return zoomed
    # A click lesion: a first pass with its first positive click alone tells its size. With ``policy.passes`` > 1
    # the zoomed pass measures it again, and the view is made again at the factor it asks for (when that differs).
    frame_runner, frame_cache, chain = runner, cache, ChainState()
    factor, view = 1.0, None
    for _ in range(policy.passes):
        c = _into(click[None], pre, view)[0] if view is not None else click
        canon = _measure(frame_runner, c, chain, frame_cache, engine, text)
        size = extent_mm(canon, engine.threshold, spacing / factor)
        want = policy.factor(size, window_mm=window_mm, spacing_mm=spacing)
        if want <= 1.0:  # large: the usual grid (also when a zoomed pass finds it larger than the first did)
            return replace(state, framed=True)
        if view is not None and abs(want / factor - 1.0) < 0.15:
            break  # the zoomed pass agrees with the view's factor
        view, chain = _view_from(canon, c, frame_runner, factor, want, usual=runner, engine=engine, raw=raw)
        factor = want
        frame_runner, frame_cache = view.runner, view.cache
    assert view is not None
    return _moved_into(state, pre, view, chain)


def _measure(
    runner: WindowRunner, c: np.ndarray, chain: ChainState, cache: EmbeddingCache, engine: Engine, text: str | None
) -> LesionMap:
    """A framing pass: the lesion of the positive click ``c`` (canonical on ``runner``'s grid) after ``chain``."""
    windows, _ = runner.segment(c, c[None], np.array([1]), chain, text=text, cache=cache)
    return lesion_probability(
        windows, c[None], runner.shape, threshold=engine.threshold, clicked_only=engine.clicked_only
    )


def _view_from(
    canon: LesionMap,
    c: np.ndarray,
    runner: WindowRunner,
    factor: float,
    want: float,
    *,
    usual: WindowRunner,
    engine: Engine,
    raw: Volume | None,
) -> tuple[ZoomView, ChainState]:
    """The view at ``want`` of the lesion a pass found (``canon``, click ``c``, on ``runner``'s grid, zoomed
    ``factor``), centred by :func:`_view_centre`, and its first chain state (that pass as its prior, when asked)."""
    assert engine.zoom is not None
    where = _view_centre(canon, c, runner.pre, runner.crop, want / factor, engine.threshold)
    view = zoom_view(usual, engine.preprocessor, raw, where, want)
    prior = view_prior(canon, runner.pre, view.pre) if engine.zoom.prior else None
    return view, ChainState(last=view.runner.prior_to_low(prior)) if prior is not None else ChainState()


def _zoomed_first(
    state: LesionState,
    click: np.ndarray,
    *,
    engine: Engine,
    runner: WindowRunner,
    raw: Volume | None,
    text: str | None,
) -> LesionState | None:
    """A click lesion framed by a first pass in a view at the largest factor around its first positive click
    (``ZoomPolicy.first == "zoomed"``): kept when the lesion wants about that factor (or the factor is fixed), viewed
    again at the factor it wants (this pass as its prior) when that is smaller; None when the lesion spans the view
    or wants no zoom (the caller frames it from the usual grid)."""
    policy = engine.zoom
    assert policy is not None
    pre = runner.pre
    spacing = float(min(pre.grid.spacing))
    window_mm = runner.crop * spacing
    top = policy.factor(None, window_mm=window_mm, spacing_mm=spacing)  # the largest (or the fixed) factor
    if top <= 1.0:
        return None
    view = zoom_view(runner, engine.preprocessor, raw, pre.grid.index_to_world(click[::-1]), top)
    c = _into(click[None], pre, view)[0]
    canon = _measure(view.runner, c, ChainState(), view.cache, engine, text)
    box = bounding_box(canon.prob > engine.threshold) if canon.prob.size else None
    if box is not None and max((b.stop - b.start) / n for b, n in zip(box, view.runner.shape, strict=True)) >= 0.95:
        # as wide as the view on some axis: at least that large (its extent here tells no more)
        return None if policy.fixed is None else _moved_into(state, pre, view, ChainState())
    want = (
        top
        if policy.fixed is not None
        else policy.factor(extent_mm(canon, engine.threshold, spacing / top), window_mm=window_mm, spacing_mm=spacing)
    )
    if want <= 1.0:
        return None
    if want / top > 1.0 / 1.15:  # about the largest factor: this view it is (its embedding is cached)
        return _moved_into(state, pre, view, ChainState())
    new_view, chain = _view_from(canon, c, view.runner, top, want, usual=runner, engine=engine, raw=raw)
    return _moved_into(state, pre, new_view, chain)


def _moved_into(state: LesionState, usual: Preprocessed, view: ZoomView, chain: ChainState) -> LesionState:
    """``state`` framed in ``view``: its clicks mapped there, its chain ``chain``."""
    dhw = _into(state.dhw, usual, view)
    return replace(state, center=dhw[0] if len(dhw) else None, dhw=dhw, chain=chain, view=view, framed=True)


def _view_centre(
    canon: LesionMap, click: np.ndarray, pre: Preprocessed, crop: int, factor: float, threshold: float
) -> np.ndarray:
    """LPS centre of a click lesion's view: the centre of its mask on ``pre``'s grid when the click stays well inside
    the view around it (a quarter window from its faces; the view is ``factor`` times finer than ``pre``), else the
    click (canonical (d, h, w) on ``pre``'s grid)."""
    click_world = pre.grid.index_to_world(click[::-1])
    box = bounding_box(canon.prob > threshold) if canon.prob.size else None
    if box is None:
        return click_world
    mid = np.array([(s.start + s.stop - 1) / 2.0 + r.start for s, r in zip(box, canon.region, strict=True)])
    # the click's distance from that centre in view voxels (the view's spacing is the usual one / factor)
    if np.abs(click - mid).max() * factor > crop / 4.0:
        return click_world
    return pre.grid.index_to_world(mid[::-1])


def _into(dhw: np.ndarray, pre: Preprocessed, view: ZoomView) -> np.ndarray:
    """Canonical (d, h, w) points of the usual grid → the view's grid (through LPS mm)."""
    if not len(dhw):
        return np.zeros((0, 3))
    world = pre.grid.index_to_world(np.asarray(dhw, float)[:, ::-1])
    return view.pre.grid.world_to_index(world)[:, ::-1].copy()


def _boxed_in(
    state: LesionState, box: Box, view: ZoomView, engine: Engine, box_prior_logit: float | None, usual: Preprocessed
) -> LesionState:
    """A box lesion in its view: the box's centre click, prior and bound on the view's grid, then its clicks."""
    model = engine.model
    takes_mask = "mask" in model.accepted_prompts | model.required_prompts
    centre, prior, bound = box_prompt(
        box, view.pre, view.runner.crop, model.low_res_size, prior_logit=box_prior_logit if takes_mask else None
    )
    chain = ChainState(last=prior.to(engine.device) if prior is not None else None)
    dhw = np.concatenate([centre[None], _into(state.dhw[1:], usual, view)]) if len(state.dhw) else centre[None]
    return replace(state, center=centre, dhw=dhw, chain=chain, bound=bound, view=view, framed=True)


__all__ = ["frame_lesion"]
