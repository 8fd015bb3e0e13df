# syntax=docker/dockerfile:1
# CryptoMarket: one image for every process of docker-compose.yml (api, ingest, worker, beat,
# migrate). Two stages: the first installs the locked dependencies and the project into a
# virtual environment, the second copies only that environment onto a clean slim image and runs
# as an unprivileged user.

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in a layer of their own: rebuilt only when the lock file changes. Every
# package is pinned with its hashes; pip refuses anything that does not match them.
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes -r requirements.lock

# Then the project itself (its dependencies are all in the layer above).
COPY pyproject.toml README.md ./
COPY cryptomarket ./cryptomarket
RUN pip install --no-deps . \
    && cryptomarket --help >/dev/null


FROM python:3.11-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 cryptomarket \
    && useradd --system --uid 10001 --gid cryptomarket --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin cryptomarket \
    && install -d -o cryptomarket -g cryptomarket -m 0750 /app

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8003
# The API; docker-compose.yml gives each other service its own command.
CMD ["cryptomarket", "serve", "--host", "0.0.0.0", "--port", "8003"]
