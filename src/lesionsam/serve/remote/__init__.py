"""nnInteractive's remote-inference protocol in ``lesionsam serve``: 3D Slicer, napari and ITK-SNAP reach our models
through ``nninteractive-client`` (:mod:`~lesionsam.serve.remote.routes`; arrays in :mod:`~lesionsam.serve.remote.nnia`,
leases in :mod:`~lesionsam.serve.remote.leases`, one object per lease in :mod:`~lesionsam.serve.remote.state`)."""
