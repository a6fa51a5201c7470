"""The layout of a packaged model (`dist/<path>/<name>/`) and how its image is reached."""

from __future__ import annotations

MODEL_PEX = "model.pex"  # the model's environment and generated entry point (worker side)
# The module `package` generates in each model's environment (its entry point: serve, worker,
# once); ml_runtime/entrypoint.py, inside the model's environment, cannot import this file and
# writes it out.
ENTRYPOINT_MODULE = "__ml_model_main__"
SERVER_PEX = "server.pex"  # the model server, from its own locked environment
IMAGE_LAYOUT = "image"  # the OCI image layout directory
GATEWAY_PEX = "gateway.pex"  # the local gateway: in no package, handed to local deploys

# A locked dependency at least this big (its installed-wheel zip in model.pex/.deps/) gets an
# image layer of its own, shared by every model that locks the same wheel (torch, the nvidia-*
# wheels, transformers, numpy, sympy, pillow, ...); only the smallest share one layer per model,
# so two models that lock mostly the same wheels differ by little more than their own wheels
# and code (a torch model has some 30 layers: registries and engines take up to 127).
# Packed size stands in for installed size: the plugin reads it without unpacking anything.
OWN_LAYER_MIN_BYTES = 256 * 2**10

CONTAINER_PORT = 8080  # what the server listens on in the image (ML_PORT)
# Set ("1") on a Lambda function whose Function URL streams responses (InvokeMode
# RESPONSE_STREAM): the runtime then answers in Lambda's streaming response mode.
LAMBDA_RESPONSE_STREAMING_ENV = "ML_LAMBDA_RESPONSE_STREAMING"
READY_PATH = "/v2/health/ready"  # 200 once a worker has loaded the model

# Results the image tool leaves in files for the plugin, never on standard output (where any
# library's print could displace them): a pulled base's description, in the directory it was
# pulled to, and an image's manifest digest, in its layout's index.json (OCI's own file).
PULLED_BASE_INFO = "base.json"
OCI_INDEX = "index.json"

# A model's Debian packages (its `system_packages` and their dependency closure beyond the base),
# pinned by sha256, in the model's folder beside its BUILD file (ml_image.system_packages).
SYSTEM_PACKAGES_LOCK = "system-packages.lock.json"
