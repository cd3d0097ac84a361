"""Experiment runners of issue 11: each trains its arms through the shared trainer
(:func:`lmn.trainer.train`, one run directory per arm and seed, one run at a time), skips
arms already finished, and renders ``docs/results/<name>.{json,md,png}`` from the run
directories alone.

* :mod:`lmn.experiments.ablations`: LMN's design choices on Tiny Shakespeare at one budget;
* :mod:`lmn.experiments.forecast`: ETTh1 forecasting, LMN against its peers.
"""
