# One image for every creditq process: api, worker, sim, migrate (the command picks which).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY creditq ./creditq
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY sim ./sim
COPY migrations ./migrations
# Editable, so that shared/migrate.py finds /app/migrations beside the packages.
RUN pip install --no-deps -e . && useradd --system --uid 10001 creditq
USER creditq
ENV CREDITQ_LOG_FORMAT=json
EXPOSE 8000 8100
CMD ["creditq", "api", "--host", "0.0.0.0", "--port", "8000"]
