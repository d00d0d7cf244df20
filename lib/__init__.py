"""EE-559 Project 1: does weight sharing and an auxiliary loss help a small CNN compare two digits?

Modules: data (MNIST -> 14x14 digit pairs), models (architectures + registry), engine (trains R
rounds at once), experiments (grid search, R-round evaluation, result cache), plots, widgets.
"""
