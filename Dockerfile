# opsflow worker and API image, built from the same pinned lock CI tests with.
#   docker build -t opsflow .
#   docker run opsflow python -m opsflow.worker   |   python -m opsflow.api
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first (cached layer), exactly as pinned in requirements.lock.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app opsflow

USER opsflow
# The API listens on all interfaces inside the container; publish it deliberately.
ENV API_HOST=0.0.0.0 \
    API_PORT=8080 \
    OPSFLOW_HOME=/app/state
EXPOSE 8080 9464

CMD ["python", "-m", "opsflow.worker"]
