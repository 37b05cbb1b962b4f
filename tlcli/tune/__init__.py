"""Hyperparameter search: the LR range test (`lr_find`) and the Optuna study (`search`)."""
