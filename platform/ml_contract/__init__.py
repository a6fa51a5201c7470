"""What the Pants plugin and the platform's tools agree on, written once for both sides.

- `model_settings`: what a model declares about how it runs (its computes, their limits, the
  defaults, the checks), which `pants deploy` hands the deploy tools as JSON;
- `package_layout`: the file names of a packaged model, the image's port and health path,
  and the result file a tool writes for the plugin.

Standard library only, and Python 3.9 syntax: Pants itself imports it (pants.toml puts
platform/ on the plugin's pythonpath), as do the image and deploy tools and the model server.
"""
