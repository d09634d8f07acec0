# One image for every tokenlife process: `tokenlife auth serve`, `tokenlife relay`, `tokenlife resource serve`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY auth_service auth_service
COPY resource_service resource_service
COPY tokenlife tokenlife
COPY looplag looplag
COPY amqpkit amqpkit
COPY tracekit tracekit
COPY migrations migrations
RUN pip install --no-cache-dir '.[server]' && useradd --system tokenlife
USER tokenlife
ENTRYPOINT ["tokenlife"]
