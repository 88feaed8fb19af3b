# The handlers the real-pod tests run, on the runtime base image (as a user's image would be).
# Built by hack/agentpool_dev/images (catalog key `test-handlers`) from the repository root.
ARG RUNTIME_IMAGE=ghcr.io/agentpool/agentpool-runtime:0.1.0
FROM ${RUNTIME_IMAGE}
COPY tests/__init__.py /app/tests/__init__.py
COPY tests/e2e/__init__.py tests/e2e/pod_handlers.py /app/tests/e2e/
COPY tests/integration/__init__.py /app/tests/integration/__init__.py
COPY tests/integration/runtime/__init__.py tests/integration/runtime/handlers.py /app/tests/integration/runtime/
