"""An MLServer custom runtime that scores with the worker's compiled model (lleaves).

Runs inside the MLServer venv, never in the project's env (it imports nothing of the project):
:func:`devtools.bench.peers.mlserver_kafka.write_model_repository` copies this file into the model
directory, which MLServer puts on ``sys.path`` while it imports the model settings'
``implementation`` (``lleaves_runtime.LleavesModel``). The driver also copies in the compiled
object the worker loads (``worker.model.scoring``'s cache for this host, compiled there if
missing) and names it and lleaves' compile options in ``parameters.extra``; ``load`` hands both to
``lleaves.Model.compile``, which loads the object instead of compiling.

Everything else is the LightGBM runtime's (``mlserver_lightgbm.LightGBMModel`` 1.7.1): the request
decoded by ``NumpyRequestCodec``, one predict per request (or per adaptive batch), the output
named ``predict``. lleaves predicts the same scores as ``Booster.predict`` to about 1e-14.
"""

from __future__ import annotations

from pathlib import Path

import lleaves
import numpy as np
from mlserver import types
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.model import MLModel
from mlserver.utils import get_model_uri


class LleavesModel(MLModel):
    """``model.txt`` scored through the compiled object named in ``parameters.extra``."""

    async def load(self) -> bool:
        model_uri = await get_model_uri(self._settings)
        extra = dict(self._settings.parameters.extra or {})
        compiled = Path(model_uri).parent / str(extra["compiled"])
        if not compiled.is_file():
            raise FileNotFoundError(f"no compiled object at {compiled}")
        model = lleaves.Model(model_file=model_uri)
        model.compile(cache=str(compiled), **dict(extra.get("compile_options", {})))
        self._model = model
        return True

    async def predict(self, payload: types.InferenceRequest) -> types.InferenceResponse:
        decoded = self.decode_request(payload, default_codec=NumpyRequestCodec)
        rows = np.ascontiguousarray(decoded, dtype=np.float64)
        prediction = self._model.predict(rows, n_jobs=1)
        return types.InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name="predict", payload=prediction)],
        )
