"""The logged student's code (MLflow's models-from-code): MLflow copies this file into the model and
runs it to load the model, so nothing is unpickled. It only names the model class."""

from compresskit_plugins.mlflow_tracker.pyfunc_model import CompressedTextClassifier
from mlflow.models import set_model

set_model(CompressedTextClassifier())
