"""Starting, watching and stopping runs: what simulation.py and deploy_local.py do.

overrides (what the user typed), preflight (every check before a runtime starts), processes,
superlink (Flower's simulation runtime), inprocess (the same apps in one process), deploy (a
local SuperLink and SuperNodes), sweep and comparison (strategy comparisons), report (a run's
summary and exit code, one for both runtimes).
"""
