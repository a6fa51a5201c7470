"""The model server: HTTP (and Lambda) front end, run from the serving environment.

Never imported inside a model's environment: it talks to model workers over pipes
(ml_runtime.protocol), so its dependencies cannot collide with a model's.
"""
