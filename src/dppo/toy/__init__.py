"""The 3D-properties toy model: :mod:`~dppo.toy.model` (spaces, scenarios, MLP, step 1),
:mod:`~dppo.toy.training` (step 2 with every loss), :mod:`~dppo.toy.summary` (tables, property
checks, LaTeX) and :mod:`~dppo.toy.plots` (figures)."""
