# The training image: TensorFlow's GPU image of the version pyproject.toml pins, the package installed
# as the README installs it, run as a non-root user. Build and run (NVIDIA Container Toolkit on the host):
#   docker build -t cifar-exp .
#   docker run --gpus all -v $PWD/data:/data:ro -v $PWD/runs:/runs cifar-exp model=resnet9 dataset.path=/data/cifar10-jpeg.tar.gz
# MLflow's store (sqlite:///mlflow.db) and Hydra's outputs/ land in /runs, the working directory: mount it
# to keep them. tests/test_docker_files.py checks this file against pyproject.toml and the README.
FROM tensorflow/tensorflow:2.21.0-gpu

# The image's Python is the system one: let pip install into it (Ubuntu 24.04 marks it externally
# managed), without keeping a wheel cache in the layer.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cifar_exp ./cifar_exp
COPY hydra_plugins ./hydra_plugins
# tensorflow==2.21.0 is already there; pip adds Keras, Hydra, MLflow, Optuna and the rest.
RUN pip install -e ".[dev]"

RUN useradd --create-home --uid 1000 cifar \
    && mkdir /runs /data \
    && chown cifar:cifar /runs
USER cifar
WORKDIR /runs
VOLUME ["/runs"]

ENTRYPOINT ["python", "-m", "cifar_exp"]
