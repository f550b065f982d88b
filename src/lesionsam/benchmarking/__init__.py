"""Benchmarks and studies measured side by side in one run: speed, memory and agreement of implementations.

One module per benchmark, each with its result dataclass (``write_json``) and its plain-text table:
:mod:`~lesionsam.benchmarking.backbone` (fast vs naive attention), :mod:`~lesionsam.benchmarking.sgp` (SGP-SAM's gates
closed and open), :mod:`~lesionsam.benchmarking.refsam3d`, :mod:`~lesionsam.benchmarking.predict` (``lesionsam
predict`` end to end), :mod:`~lesionsam.benchmarking.auto` (whole-volume automatic inference),
:mod:`~lesionsam.benchmarking.interactive` (an interactive session, and the server round trip), and the box-vs-click
study :mod:`~lesionsam.benchmarking.box_study`. Shared helpers: :mod:`~lesionsam.benchmarking.memory` (dtypes,
device sync, peak memory) and :mod:`~lesionsam.benchmarking.synthetic_ct` (a full-size synthetic CT).

This layer sits beside the workflows' callers: it imports models, inference, evaluation, data and the server's
round-trip timer (:mod:`lesionsam.serve.bench`), never the CLI, the workflows or training. Nothing is imported here,
so importing one benchmark does not build the others.
"""
