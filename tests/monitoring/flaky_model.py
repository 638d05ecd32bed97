"""A model that fails on some inputs (MLflow models-from-code: logged as this file, no pickled class): a wine whose
alcohol is 14 or more raises, which MLflow's scoring server answers with 400. The canary the bake must roll back."""

import mlflow
from mlflow.pyfunc import PythonModel


class Flaky(PythonModel):
    def predict(self, context, model_input, params=None):
        if (model_input["alcohol"] >= 14).any():
            raise ValueError("this model fails on strong wines")
        return [5.0] * len(model_input)


mlflow.models.set_model(Flaky())
