# VSML Lab: one image for the API and the GPU workers (docker-compose.yml).
#
#   docker build -t vsml-lab .                      # CUDA build of torch (PyPI)
#   docker build -t vsml-lab:cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# TORCH_INDEX_URL picks where torch comes from: empty means PyPI, whose Linux
# x86_64 wheel of the pinned version is the CUDA build; the CPU index above
# gives a much smaller image for hosts without a GPU; a cuXXX index of
# download.pytorch.org picks a specific CUDA version.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VSML_ARTIFACT_DIR=/var/lib/vsml-lab/artifacts

# Fashion-MNIST from Debian (nothing is downloaded at run time); gcc builds the
# library's native CPU kernel on first use (without it the slower PyTorch path
# runs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        dataset-fashion-mnist gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# torch first, in its own layer: it is most of the image and changes rarely.
RUN pip install "torch==${TORCH_VERSION}" \
        ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"}

# The service reads alembic.ini, migrations/ and frontend/ beside its package
# and the library builds vsml/kernels/dense_lstm.c, so the source tree stays in
# /app and the package is installed from it in place.
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY vsml ./vsml
COPY server ./server
COPY worker ./worker
COPY migrations ./migrations
COPY frontend ./frontend
COPY configs ./configs
RUN pip install -e .

# Run as an unprivileged user; the artefact folder is created here so that a
# fresh named volume mounted on it starts out owned by that user.
RUN useradd --create-home --uid "${APP_UID}" --shell /usr/sbin/nologin vsml \
    && mkdir -p "${VSML_ARTIFACT_DIR}" \
    && chown -R vsml:vsml /var/lib/vsml-lab
USER vsml

# The API binds to 127.0.0.1 unless VSML_HOST says otherwise, and refuses any
# other address without VSML_API_TOKEN; docker-compose.yml sets both.
EXPOSE 8000
CMD ["vsml-lab", "api"]
