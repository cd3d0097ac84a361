"""Probes of what a trained model's memory does: use of distant context
(:mod:`lmn.probes.context`) and the attention mass per tree level (:mod:`lmn.probes.levels`)."""
