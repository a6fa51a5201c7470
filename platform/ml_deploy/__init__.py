"""Deploys packaged model images to the compute each model declares (`pants deploy`)."""
