"""EE-559 Project 1: does weight sharing and an auxiliary loss help a small CNN compare two digits?

Modules: data (MNIST -> 14x14 digit pairs), models (architectures + registry), engine (trains R
rounds at once), baseline (the plain one-model loop, a reference), experiments (grid search,
R-round evaluation, result cache), seed_study (the other seed reports' architectures), best (beyond
the seed reports), plots, widgets (the retrain panel), export (notebook -> offline HTML), report.
"""
