"""What a model declares about how it runs: its computes, their limits, the defaults and the
validation of a model's settings. One table read by the Pants plugin (the `ml_model` target's
fields, help and checks, on Pants' Python 3.9), the packager and the deploy drivers (3.11).

Standard library only, and Python 3.9 syntax: it is imported by Pants itself.
"""
