# The otto-farm image: every service of docker-compose.yml (workers, control, pilot, Flower) runs it.
FROM python:3.11-slim

# Workers clone, fetch, merge and push task branches with git; ssh reaches ssh:// remotes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY otto_farm ./otto_farm
COPY tasks ./tasks
COPY config ./config
RUN pip install --no-cache-dir .

# Agents run commands as the worker's user: not root.
RUN useradd --create-home --uid 1000 otto
USER otto
WORKDIR /home/otto
ENV OTTO_FARM_HOME=/home/otto/.otto-farm \
    OTTO_FARM_WORK_DIR=/home/otto/work \
    PYTHONUNBUFFERED=1

CMD ["otto-farm", "--help"]
