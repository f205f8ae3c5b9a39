# One image for every lambdaflow service of docker-compose.yaml: the streaming app, the serving app, the Spark
# master and workers, and Airflow's components (the DAG's tasks start Spark drivers, so they need this image's
# JDK, PySpark and lambdaflow's Spark jar). Build: docker build -t lambdaflow:local .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the pinned environment, the project, lambdaflow's Spark jar (javac needs the JDK) -------------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jdk-headless \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/lambdaflow/venv
RUN python -m venv "$VIRTUAL_ENV" && "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check uv==0.13.8
WORKDIR /opt/lambdaflow/app
COPY requirements.txt constraints.txt ./
# bytecode compiled here: PYTHONDONTWRITEBYTECODE hosts would otherwise recompile pandas, PySpark and Airflow
# in every process
RUN "$VIRTUAL_ENV/bin/uv" pip install --python "$VIRTUAL_ENV/bin/python" --no-cache --compile-bytecode \
        -r requirements.txt -c constraints.txt
COPY . .
RUN "$VIRTUAL_ENV/bin/uv" pip install --python "$VIRTUAL_ENV/bin/python" --no-cache --no-deps -e . \
    && "$VIRTUAL_ENV/bin/python" -m compileall -q lambdaflow cli ingestion speed batch serving expectations dags \
    && "$VIRTUAL_ENV/bin/python" -m lambdaflow.spark_jar

# --- runtime: the JRE only, a non-root user, the class archive made by this image's own JVM --------------
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini \
    && rm -rf /var/lib/apt/lists/*
# uid 50000, group 0: Airflow's image convention, so volumes written by either image stay readable
RUN useradd --create-home --uid 50000 --gid 0 --shell /bin/bash lambdaflow \
    && mkdir -p /data /opt/airflow \
    && chown lambdaflow:0 /data /opt/airflow
COPY --from=build --chown=lambdaflow:0 /opt/lambdaflow /opt/lambdaflow
ENV VIRTUAL_ENV=/opt/lambdaflow/venv \
    SPARK_HOME=/opt/lambdaflow/venv/lib/python3.11/site-packages/pyspark \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LAMBDAFLOW_DATA_DIR=/data \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/lambdaflow/app/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
ENV PATH=$VIRTUAL_ENV/bin:$SPARK_HOME/bin:$PATH \
    PYSPARK_PYTHON=$VIRTUAL_ENV/bin/python \
    PYSPARK_DRIVER_PYTHON=$VIRTUAL_ENV/bin/python
USER lambdaflow
WORKDIR /opt/lambdaflow/app
# The class-data-sharing archive must come from the JVM that maps it (this stage's JRE); best effort, as in
# `make venv`: without it, Spark drivers start a few seconds slower.
RUN SPARK_LOCAL_IP=127.0.0.1 python -m lambdaflow.spark_classes
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["lambdaflow", "--help"]
