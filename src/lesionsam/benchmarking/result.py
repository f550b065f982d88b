"""What every benchmark result shares: it is written as JSON, atomically."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lesionsam.utils.dataclass_io import atomic_write_bytes


class JsonResult:
    """Mixin of the benchmarks' result dataclasses: :meth:`write_json` writes its fields (and :meth:`json_extra`)."""

    def json_extra(self) -> dict[str, Any]:
        """Derived values written beside the fields (none by default)."""
        return {}

    def write_json(self, path: str | Path) -> Path:
        """The result as indented JSON at ``path`` (temp file + rename)."""
        payload = {**asdict(self), **self.json_extra()}  # type: ignore[call-overload]
        return atomic_write_bytes(path, json.dumps(payload, indent=2).encode())
