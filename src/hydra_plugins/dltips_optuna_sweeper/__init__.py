"""dltips' Optuna sweeper: `hparams_search=optuna` on current Optuna, with pruning.

Hydra finds it by scanning the `hydra_plugins` namespace package: config.py registers the
configs (hydra/sweeper=dltips_optuna, its samplers and pruners), sweeper.py is the plugin,
_impl.py the search itself (imported only when a search runs: Optuna takes a while to load).
"""
