"""``lesionsam serve``: a local web viewer (NiiVue) and an HTTP API over :mod:`lesionsam.inference.session`.

Layers: :mod:`~lesionsam.serve.paths` (every file the server reads or writes stays inside ``--root``),
:mod:`~lesionsam.serve.nifti` (volumes and label maps as NIfTI bytes for the viewer),
:mod:`~lesionsam.serve.sessions` (open sessions: unguessable ids, one lock each), :mod:`~lesionsam.serve.schemas`
(the JSON bodies), :mod:`~lesionsam.serve.app` (the FastAPI routes) and ``static/`` (the page, with NiiVue vendored).
The page uses only the HTTP API; other clients (3D Slicer, scripts) can use it too (see the README and ``/docs``).
"""

from __future__ import annotations
