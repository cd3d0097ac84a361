"""Efficiency benchmarks: ``lmn bench decode`` and ``lmn bench train``.

    lmn bench decode --quick --out /tmp/bench      # CI smoke test, < 1 minute
    lmn bench decode                                # the full sweep (hours on one core)
    lmn bench train --quick --out /tmp/bench
    lmn bench report docs/results/bench             # re-render tables/plots from the JSON

Every measured point runs in a fresh subprocess (``python -m lmn.bench._decode_point``
or ``lmn.bench._train_point``) that prints one JSON line, so that its peak RSS belongs to
that point alone and a point that runs out of time or memory is recorded, not fatal.
The driver writes ``<name>.json`` (everything measured, plus machine, versions, threads,
device, git commit and the command line), ``<name>.md`` (rendered from the JSON alone,
see :mod:`lmn.bench.report`) and PNG plots.

Layout:

* :mod:`lmn.bench.common` -- size parsing (the machine description and result header come
  from :mod:`lmn.records`, the atomic writes from :mod:`lmn.atomic`), subprocess runner, timers;
* :mod:`lmn.bench.models` -- the sizes and decode adapters, read from the model registry (:mod:`lmn.kinds`);
* :mod:`lmn.materialized` (beside the core, a test oracle) -- the LMN forward that gathers
  every slot into a ``(B, T, slots, d)`` tensor (what the efficient parallel form avoids);
* :mod:`lmn.bench.decode`, :mod:`lmn.bench.train` -- the drivers;
* :mod:`lmn.bench.report` -- markdown tables and plots.

Nothing here is imported by ``import lmn``; the plots need matplotlib and the baselines
``transformers`` (``pip install 'torch-lmn[bench]'``), imported only when used.
"""
