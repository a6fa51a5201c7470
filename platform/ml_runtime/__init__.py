"""Runtime code shipped inside every model's environment.

Standard library only: this package runs next to the model's own, pinned dependencies and must
never add to or conflict with them.
"""
