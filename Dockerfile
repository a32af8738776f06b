# The otto-farm image: every service of docker-compose.yml (workers, control, pilot, Flower) runs it.
FROM python:3.11-slim

# Workers clone, fetch, merge and push task branches with git; ssh reaches ssh:// remotes; bubblewrap is
# the sandbox task commands run in (docs/security.md, docs/deploy.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates bubblewrap \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY otto_farm ./otto_farm
COPY tasks ./tasks
COPY config ./config
RUN pip install --no-cache-dir .

# Task commands run as the worker's user, not root, inside bubblewrap; with no setuid program in the
# image, nothing that gets out of the sandbox can become root in the container either.
RUN useradd --create-home --uid 1000 otto \
    && find / -xdev -perm /6000 -type f -exec chmod a-s {} +
USER otto
WORKDIR /home/otto
ENV OTTO_FARM_HOME=/home/otto/.otto-farm \
    OTTO_FARM_WORK_DIR=/home/otto/work \
    PYTHONUNBUFFERED=1

CMD ["otto-farm", "--help"]
