"""Built-in methods; importing this package registers them."""

from lesionsam.models.methods import hsam as hsam  # noqa: F401
from lesionsam.models.methods import refsam3d as refsam3d  # noqa: F401
from lesionsam.models.methods import sam_med3d  # noqa: F401
from lesionsam.models.methods import sgp as sgp  # noqa: F401
