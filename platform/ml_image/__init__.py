"""Builds, pushes and pulls OCI images without a daemon; standard library only."""
