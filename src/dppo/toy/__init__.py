"""The 3D-properties toy model: :mod:`~dppo.toy.model` (spaces, scenarios, the MLP and its
run-stacked form, step 1), :mod:`~dppo.toy.training` (all runs as one batched computation:
step 1, then step 2 with every loss), :mod:`~dppo.toy.summary` (tables, property checks,
LaTeX) and :mod:`~dppo.toy.plots` (figures)."""
