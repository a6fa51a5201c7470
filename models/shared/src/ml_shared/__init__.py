"""Code shared by several models. Standard library only, so it fits every model's resolve."""
