"""Built-in methods; importing this package registers them."""

from lesionsam.models.methods import sam_med3d  # noqa: F401
