# fraud-monitor images as build targets of one file (docker-compose.yml builds both):
#   worker  - the stream worker and the tools (produce, tail, ...), without TensorFlow: `pip install fraud-monitor`
#   trainer - adds TensorFlow and tf2onnx: `pip install fraud-monitor[train]`
# Paths (config/, models/, monitoring/) resolve from the working directory, /app.

FROM python:3.13.0-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
# Dependencies before the code, so that a code change reinstalls neither them nor TensorFlow.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt && pip install -r /tmp/requirements.txt \
    && useradd --uid 10001 --create-home fraudmon && mkdir -p /models /app/runs && chown fraudmon /models /app/runs

FROM scratch AS source
COPY fraudmon /app/fraudmon
COPY stream_app /app/stream_app
COPY training /app/training
COPY monitoring /app/monitoring
COPY config /app/config
COPY models /app/models

FROM base AS trainer
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['train']))" \
        > /tmp/train.txt && pip install -r /tmp/train.txt
COPY --from=source /app /app
RUN pip install --no-deps . && rm -rf build
USER fraudmon
ENTRYPOINT ["fraudmon"]
CMD ["train", "--help"]

FROM base AS worker
COPY --from=source /app /app
RUN pip install --no-deps . && rm -rf build
USER fraudmon
EXPOSE 8000
ENTRYPOINT ["fraudmon"]
CMD ["--help"]
