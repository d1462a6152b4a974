# The fraud-monitor image: trainer, worker and producer (docker-compose.yml runs each as its own service).
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app

# Dependencies first, so that a code change does not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN mkdir fraudmon stream_app training monitoring && touch fraudmon/__init__.py stream_app/__init__.py \
        training/__init__.py monitoring/__init__.py \
    && pip install -e . && rm -rf fraudmon stream_app training monitoring

COPY fraudmon fraudmon
COPY stream_app stream_app
COPY training training
COPY monitoring monitoring
COPY config config
COPY models models
RUN pip install --no-deps -e . && useradd --uid 10001 --create-home fraudmon \
    && mkdir -p /models /app/runs && chown fraudmon /models /app/runs
USER fraudmon

EXPOSE 8000
ENTRYPOINT ["fraudmon"]
CMD ["--help"]
