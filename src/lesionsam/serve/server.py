"""Build the served application from a checkpoint and run it with uvicorn (``lesionsam serve``)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command's parser imports this module: nothing heavy at import time
    from lesionsam.data.io import Volume
    from lesionsam.inference.predictor import Predictor
    from lesionsam.inference.session import InteractiveSession
    from lesionsam.inference.zoom import ZoomPolicy

#: Default TCP port of ``lesionsam serve``.
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning line for a non-loopback ``--host`` (None for a loopback one)."""
    if is_loopback(host):
        return None
    return (
        f"--host {host}: the server is reachable from other machines and has no authentication: anyone who can "
        "reach this port can read every image under --root and write masks there"
    )


def allowed_hosts_for(host: str) -> list[str] | None:
    """``Host`` header values to answer: the loopback names, plus ``host`` itself; None (any) for a wildcard."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        return None
    names = ["127.0.0.1", "localhost", "::1", "[::1]"]
    if host not in names:
        names.append(host)
    return names


def session_factory(
    checkpoint: str | os.PathLike[str] | None,
    *,
    preset: str | None = None,
    device: str = "cpu",
    runtime: str = "torch",
    **predictor_options: Any,
) -> tuple[Callable[[Volume], InteractiveSession], str]:
    """``(make_session, model_name)``: the model loaded once, and a function opening a session on a volume.

    ``runtime``: ``"torch"``, or ``"onnxruntime"`` / ``"onnxruntime-int8"`` with ``checkpoint`` a folder written by
    ``lesionsam export`` (the same sessions; the model calls run in ONNX Runtime).

    Raises:
        FileNotFoundError, ValueError: a checkpoint that is missing or not one (checked before loading).
    """
    from lesionsam.inference.predictor import Predictor
    from lesionsam.inference.session import InteractiveSession
    from lesionsam.models.checkpoint import check_checkpoint_file

    if runtime != "torch":
        from lesionsam.inference.onnx_model import onnx_predictor

        if checkpoint is None:
            raise ValueError(f"--runtime {runtime} needs --checkpoint DIR, a folder written by lesionsam export")
        predictor = onnx_predictor(checkpoint, runtime=runtime, device=device, **predictor_options)
        name = f"{Path(checkpoint).name} ({runtime})"
    else:
        if checkpoint is not None:
            check_checkpoint_file(checkpoint)
        predictor = Predictor.from_checkpoint(checkpoint, preset=preset, device=device, **predictor_options)
        name = Path(checkpoint).name if checkpoint is not None else f"random weights ({preset or 'sam_med3d_vit_b'})"

    def make_session(volume: Volume) -> InteractiveSession:
        return InteractiveSession(predictor, volume)

    return make_session, name


def load_proposer(checkpoint: str | os.PathLike[str], *, device: str = "cpu") -> Predictor:
    """The predictor of ``--proposals``: a prompt-free (H-SAM) or text-referred (RefSAM3D) lesionsam checkpoint.

    Raises:
        FileNotFoundError, ValueError: a missing file, or a checkpoint that can make no proposal.
    """
    from lesionsam.inference.predictor import Predictor
    from lesionsam.models.checkpoint import check_checkpoint_file
    from lesionsam.serve.proposals import proposal_kinds

    check_checkpoint_file(checkpoint)
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    if not proposal_kinds(predictor):
        raise ValueError(
            f"--proposals {checkpoint}: its model is neither prompt-free (hsam) nor text-referred (refsam3d), "
            "so it cannot propose lesions without clicks"
        )
    return predictor


def serve(
    root: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    max_upload_mb: float = 1024.0,
    max_sessions: int = 4,
    cors_origins: Sequence[str] = (),
    proposals: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    model_license: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    zoom: ZoomPolicy | None = None,
    runtime: str = "torch",
    warn: Callable[[str], None] = print,
    log_level: str = "info",
) -> None:
    """Serve ``root`` at ``http://host:port/`` until interrupted (every check happens before the model loads).

    ``proposals``: a prompt-free (H-SAM) or text-referred (RefSAM3D) checkpoint for automatic / text proposals;
    ``zoom``: zoom-in for small lesions (:class:`~lesionsam.inference.zoom.ZoomPolicy`, None: off).
    ``api_key``, ``model_license``: nnInteractive's remote protocol's bearer key and licence line
    (:func:`~lesionsam.serve.app.create_app`).
    ``runtime``: ``"torch"``, or ``"onnxruntime"`` / ``"onnxruntime-int8"`` with ``checkpoint`` an export folder.

    Raises:
        ValueError: a bad root, port or limit; FileNotFoundError: a missing checkpoint.
    """
    import uvicorn

    from lesionsam.serve.app import create_app

    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise ValueError(f"--root {root_path}: not an existing folder; give the folder holding your images")
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    if not max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    if max_sessions < 1:
        raise ValueError(f"--max-sessions must be >= 1, got {max_sessions}")
    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key is empty: give a key, or leave the option out for none")
    warning = host_warning(host)
    if warning:
        warn(warning)
    if proposals is not None:
        from lesionsam.models.checkpoint import check_checkpoint_file

        check_checkpoint_file(proposals)  # before minutes of loading the main model
    make_session, model_name = session_factory(
        checkpoint, preset=preset, device=device, dtype=dtype, zoom=zoom, runtime=runtime
    )
    proposer = load_proposer(proposals, device=device) if proposals is not None else None
    app = create_app(
        root_path,
        make_session=make_session,
        model_name=model_name,
        max_upload_mb=max_upload_mb,
        max_sessions=max_sessions,
        cors_origins=cors_origins,
        allowed_hosts=allowed_hosts_for(host),
        proposer=proposer,
        api_key=api_key,
        model_license=model_license,
    )
    shown = f"[{host}]" if ":" in host else host
    warn(f"serving {root_path.resolve()} at http://{shown}:{port}/ (API docs: /docs); Ctrl+C stops")
    keyed = " (with the API key)" if api_key else ""
    warn(f"3D Slicer / napari / ITK-SNAP remote mode: server URL http://{shown}:{port}{keyed}")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level=log_level)
