"""The code MLflow stores with every registered voice ("models from code").

Loading a version runs this file instead of unpickling an object: it only needs the ``cosyml`` package,
which the version lists in its pip requirements. See :class:`cosyml.pyfunc.VoiceModel`.
"""

from mlflow.models import set_model

from cosyml.pyfunc import VoiceModel

set_model(VoiceModel())
