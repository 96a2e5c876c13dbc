"""onnx's own backend test suite with lconnx in front of onnxruntime.

Every case of the ``node``, ``real``, ``simple``, ``pytorch-converted`` and ``pytorch-operator``
kinds (the data ships in the onnx wheel) is one pytest case, named ``kind/test_name``:

1. ``lconnx.collapse`` must not raise on the model, nor modify it;
2. the model runs on plain onnxruntime and is compared to the case's expected outputs with
   the case's rtol/atol, as onnx's runner does; a case that fails here is skipped (it says
   nothing about lconnx: unsupported op, old opset, missing locale…);
3. the same model through :class:`LconnxBackend` (collapse, then onnxruntime) must pass too.

Rather than collecting ``onnx.backend.test.BackendTest`` twice, the cases' data is read
directly, which keeps the whole file well under a minute. ``real`` cases use the small
("light") models shipped in the wheel, with the runner's deterministic dummy inputs; a
``real`` case whose model would have to be downloaded is skipped unless already on disk.
"""

from __future__ import annotations

import glob
import os
import unittest
import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from graphs import mlp_gemm
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep
from onnx.backend.test.case.test_case import TestCase
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner

import lconnx

ort_backend = pytest.importorskip("onnxruntime.backend")

KINDS = ("node", "real", "simple", "pytorch-converted", "pytorch-operator")
#: Session options for every run: errors only (baseline failures are expected and skipped).
SESSION_OPTIONS = {"log_severity_level": 3, "intra_op_num_threads": 1}
#: ``real`` models are shipped in the wheel under this url prefix (relative to site-packages).
LIGHT_PREFIX = "onnx/backend/test/data/light/"

DataSets = list[tuple[list[Any], list[Any]]]


class LconnxBackendRep(BackendRep):
    """onnxruntime's prepared model, with the collapse result that produced it."""

    def __init__(self, inner: BackendRep, result: lconnx.CollapseResult) -> None:
        self.inner = inner
        self.result = result

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        return self.inner.run(inputs, **kwargs)


class LconnxBackend(Backend):
    """``lconnx.collapse`` with default settings, then onnxruntime's own backend."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return ort_backend.is_compatible(model, device, **kwargs)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> BackendRep:
        result = lconnx.collapse(model)
        return LconnxBackendRep(ort_backend.prepare(result.model, device, **kwargs), result)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return ort_backend.supports_device(device)


def _all_cases() -> list:
    params = []
    with warnings.catch_warnings():  # generating node cases overflows casts on purpose
        warnings.simplefilter("ignore")
        for kind in KINDS:
            cases = sorted(load_model_tests(kind=kind), key=lambda c: c.name)
            params.extend(pytest.param(case, id=f"{kind}/{case.name}") for case in cases)
    return params


CASES = _all_cases()


# --- reading a case's model and data, as onnx.backend.test.runner does -----------------------


def _read_proto(path: str, type_proto: onnx.TypeProto) -> Any:
    with open(path, "rb") as f:
        content = f.read()
    if type_proto.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(content)
        return numpy_helper.to_list(seq)
    if type_proto.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(content)
        return numpy_helper.to_optional(opt)
    if type_proto.HasField("tensor_type"):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(content)
        return numpy_helper.to_array(tensor)
    pytest.skip(f"{path}: proto type not supported by the runner either")


def _dir_data(model: onnx.ModelProto, model_dir: str) -> DataSets:
    data = []
    for set_dir in sorted(glob.glob(os.path.join(model_dir, "test_data_set*"))):
        n_in = len(glob.glob(os.path.join(set_dir, "input_*.pb")))
        n_out = len(glob.glob(os.path.join(set_dir, "output_*.pb")))
        graph = model.graph
        inputs = [
            _read_proto(os.path.join(set_dir, f"input_{i}.pb"), graph.input[i].type)
            for i in range(n_in)
        ]
        outputs = [
            _read_proto(os.path.join(set_dir, f"output_{i}.pb"), graph.output[i].type)
            for i in range(n_out)
        ]
        data.append((inputs, outputs))
    return data


def _light_model(case: TestCase) -> tuple[onnx.ModelProto, DataSets]:
    """A shipped light model: the runner's dummy inputs, the expected outputs beside it."""
    site_packages = os.path.dirname(os.path.dirname(os.path.abspath(onnx.__file__)))
    path = os.path.normpath(os.path.join(site_packages, case.url))
    if not os.path.exists(path):
        pytest.skip(f"light model {path} not shipped with this onnx")
    model = onnx.load(path)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [
        Runner.generate_dummy_data(vi, seed=0, name=case.model_name, random=False)
        for vi in model.graph.input
        if vi.name not in initializers
    ]
    prefix = os.path.splitext(path)[0]
    outputs = []
    for i in range(len(model.graph.output)):
        expected = f"{prefix}_output_{i}.pb"
        if not os.path.exists(expected):
            pytest.skip(f"no expected output {expected}")
        outputs.append(numpy_helper.to_array(onnx.load_tensor(expected)))
    return model, [(inputs, outputs)]


def _downloaded_model_dir(case: TestCase) -> str:
    """Where the runner keeps downloaded ``real`` models; skip when this one is not there."""
    home = os.path.expanduser(os.getenv("ONNX_HOME", os.path.join("~", ".onnx")))
    models = os.getenv("ONNX_MODELS", os.path.join(home, "models"))
    model_dir = os.path.join(models, case.model_name)
    if not os.path.exists(os.path.join(model_dir, "model.onnx")):
        pytest.skip(f"model {case.model_name} must be downloaded from {case.url}")
    return model_dir


def load_case(case: TestCase) -> tuple[onnx.ModelProto, DataSets]:
    if case.model is not None:  # node cases live in memory
        data = [
            ([_array(t) for t in inputs], [_array(t) for t in outputs])
            for inputs, outputs in case.data_sets
        ]
        return case.model, data
    if case.url is not None and case.url.startswith(LIGHT_PREFIX):
        return _light_model(case)
    model_dir = case.model_dir or _downloaded_model_dir(case)
    model = onnx.load(os.path.join(model_dir, "model.onnx"))
    return model, _dir_data(model, model_dir)


def _array(tensor: Any) -> Any:
    return numpy_helper.to_array(tensor) if isinstance(tensor, onnx.TensorProto) else tensor


def run_and_compare(backend: Any, model: onnx.ModelProto, data: DataSets, case: TestCase) -> Any:
    rep = backend.prepare(model, "CPU", **SESSION_OPTIONS)
    for inputs, expected in data:
        outputs = list(rep.run(inputs))
        Runner.assert_similar_outputs(expected, outputs, rtol=case.rtol, atol=case.atol)
    return rep


# --- the test -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_backend_case_still_passes(case: TestCase) -> None:
    model, data = load_case(case)
    before = model.SerializeToString()
    result = lconnx.collapse(model)  # a crash here is a failure, whatever onnxruntime thinks
    assert model.SerializeToString() == before, "lconnx.collapse modified its input"
    if result.report.folded == 0:
        assert result.model.SerializeToString() == before, "nothing folded, yet the model changed"

    try:
        run_and_compare(ort_backend, model, data, case)
    except unittest.SkipTest as exc:
        pytest.skip(f"onnxruntime skips it: {exc}")
    except Exception as exc:  # the case does not pass without lconnx: nothing to compare
        pytest.skip(f"fails on plain onnxruntime: {type(exc).__name__}: {_first_line(exc)}")

    rep = run_and_compare(LconnxBackend, model, data, case)
    assert rep.result.report.folded == result.report.folded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def test_suite_is_not_empty() -> None:
    """The wheel's data went missing or the loader changed: the suite would pass vacuously."""
    kinds = {param.id.split("/")[0] for param in CASES}
    assert kinds == set(KINDS)
    assert len(CASES) > 1000


def test_backend_really_folds() -> None:
    """Positive control: the wrapper is not a no-op. A Linear → PRelu(1) → Linear model folds
    into one Gemm through the backend and still matches onnxruntime on the original."""
    model = mlp_gemm(d=8, h=32, slope=1.0)
    rep = LconnxBackend.prepare(model, "CPU", **SESSION_OPTIONS)
    assert rep.result.report.folded == 1
    assert [n.op_type for n in rep.result.model.graph.node] == ["Gemm"]
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    (expected,) = ort_backend.prepare(model, "CPU", **SESSION_OPTIONS).run([x])
    (got,) = rep.run([x])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
