"""Reference data at registration: .npy/.npz/.csv samples checked against real ONNX models."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from modelgate.monitor.profile import ReferenceProfile
from modelgate.registry.reference import ReferenceDataError, reference_profile

Reference = Callable[[bytes, dict[str, np.ndarray]], list[np.ndarray]]


def _profile(model: bytes, path: Path, **options: int) -> ReferenceProfile:
    return ReferenceProfile.from_json(reference_profile(model, path, **options))


def _columns(*names: str) -> bytes:
    """`total = sum of the inputs`, each FP32 [N, 1]: a model with one feature per input."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1]) for n in names]
    out = helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1])
    graph = helper.make_graph(
        [helper.make_node("Sum", list(names), ["total"])], "sum", inputs, [out]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_npy_sample_profiles_every_input_feature_and_output_column(
    tmp_path: Path, model_files: dict[str, bytes], rng: np.random.Generator, reference: Reference
) -> None:
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    profile = _profile(model_files["classifier"], tmp_path / "x.npy")
    assert profile.rows == 3000
    assert [f.name for f in profile.inputs] == [f"input[{j}]" for j in range(8)]
    assert [(f.name, f.kind) for f in profile.outputs] == [
        ("label", "categorical"),
        ("probabilities[0]", "numeric"),
        ("probabilities[1]", "numeric"),
        ("probabilities[2]", "numeric"),
    ]
    for feature in profile.features():
        assert sum(feature.proportions) == pytest.approx(1.0)
    for j, feature in enumerate(profile.inputs):
        assert feature.mean == pytest.approx(float(x[:, j].astype(np.float64).mean()))
        assert np.allclose(feature.proportions, 0.1, atol=0.01)
    # The outputs profiled are the model's real outputs on the sample.
    labels, probabilities = reference(model_files["classifier"], {"input": x})
    label = profile.outputs[0]
    shares = dict(zip(label.categories, label.proportions, strict=False))
    assert shares == {c: pytest.approx(np.mean(labels == c)) for c in np.unique(labels).tolist()}
    assert profile.outputs[2].mean == pytest.approx(probabilities[:, 1].mean(), rel=1e-5)


def test_running_in_chunks_gives_the_same_profile(
    tmp_path: Path, model_files: dict[str, bytes], rng: np.random.Generator
) -> None:
    np.save(tmp_path / "x.npy", rng.normal(size=(101, 8)).astype(np.float32))
    whole = _profile(model_files["classifier"], tmp_path / "x.npy")
    chunked = _profile(model_files["classifier"], tmp_path / "x.npy", chunk_rows=7)
    assert chunked.outputs == whole.outputs


def test_a_csv_header_names_the_features_and_empty_cells_are_missing(
    tmp_path: Path, model_files: dict[str, bytes], rng: np.random.Generator
) -> None:
    x = rng.normal(size=(400, 8))
    x[:100, 2] = np.nan
    names = [f"f{j}" for j in range(8)]
    lines = [",".join(names)] + [
        ",".join("" if np.isnan(v) else str(float(v)) for v in row) for row in x
    ]
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    profile = _profile(model_files["classifier"], tmp_path / "x.csv")
    assert profile.rows == 400
    assert [f.name for f in profile.inputs] == names
    assert profile.inputs[2].missing_rate == 0.25
    assert profile.inputs[0].missing_rate == 0.0
    # Without a header, the first row is data and the features keep their tensor names.
    (tmp_path / "y.csv").write_text("\n".join(lines[1:]) + "\n")
    plain = _profile(model_files["classifier"], tmp_path / "y.csv")
    assert plain.rows == 400
    assert [f.name for f in plain.inputs][:2] == ["input[0]", "input[1]"]
    renamed = [dataclasses.replace(f, name=f"input[{j}]") for j, f in enumerate(profile.inputs)]
    assert list(plain.inputs) == renamed


def test_a_table_is_split_between_several_inputs(
    tmp_path: Path, model_files: dict[str, bytes], rng: np.random.Generator
) -> None:
    np.save(tmp_path / "ab.npy", rng.normal(size=(60, 4)).astype(np.float32))
    pair = _profile(model_files["pair"], tmp_path / "ab.npy")
    assert [(f.name, f.tensor, f.column) for f in pair.inputs] == [
        ("a[0]", "a", 0),
        ("a[1]", "a", 1),
        ("b[0]", "b", 0),
        ("b[1]", "b", 1),
    ]
    # [N, 1] inputs: one feature per input; a CSV header of input names matches by name.
    model = _columns("age", "income")
    (tmp_path / "cols.csv").write_text("income,age\n1000,30\n2000,40\n3000,50\n")
    cols = _profile(model, tmp_path / "cols.csv")
    assert [(f.name, f.tensor, f.mean) for f in cols.inputs] == [
        ("age", "age", 40.0),
        ("income", "income", 2000.0),
    ]
    assert cols.outputs[0].mean == pytest.approx(2040.0)


def test_a_npz_sample_gives_one_array_per_input(
    tmp_path: Path, model_files: dict[str, bytes], rng: np.random.Generator
) -> None:
    a, b = rng.normal(size=(80, 2)), rng.normal(size=(80, 2))
    np.savez(tmp_path / "ab.npz", b=b, a=a)
    profile = _profile(model_files["pair"], tmp_path / "ab.npz")
    assert profile.outputs[0].mean == pytest.approx((a[:, 0] + b[:, 0]).mean(), rel=1e-5)
    np.savez(tmp_path / "a.npz", a=a, c=b)
    with pytest.raises(ReferenceDataError, match=r"missing \['b'\], unknown \['c'\]"):
        reference_profile(model_files["pair"], tmp_path / "a.npz")
    np.savez(tmp_path / "short.npz", a=a, b=b[:10])
    with pytest.raises(ReferenceDataError, match="different row counts"):
        reference_profile(model_files["pair"], tmp_path / "short.npz")
    np.savez(tmp_path / "wide.npz", a=a, b=rng.normal(size=(80, 3)))
    with pytest.raises(ReferenceDataError, match="array 'b' has 3 columns, the input takes 2"):
        reference_profile(model_files["pair"], tmp_path / "wide.npz")


def test_integer_and_string_inputs_are_categorical(
    tmp_path: Path, model_files: dict[str, bytes], rng: np.random.Generator
) -> None:
    np.save(tmp_path / "idx.npy", rng.integers(0, 4, size=500))
    lookup = _profile(model_files["lookup"], tmp_path / "idx.npy")
    (idx,) = lookup.inputs
    assert (idx.kind, idx.column, sorted(idx.categories)) == ("categorical", None, [0, 1, 2, 3])
    assert lookup.outputs[0].kind == "numeric"  # out = table[idx], FP32
    (tmp_path / "s.csv").write_text("a,x,1\nb,,2\na,y,3\na,x,\n")
    strings = _profile(model_files["echo_bytes"], tmp_path / "s.csv")
    first, second, third = strings.inputs
    assert first.categories == ("a", "b")
    assert first.proportions == pytest.approx([0.75, 0.25, 0.0])
    assert (second.missing_rate, third.missing_rate) == (0.25, 0.25)
    assert [f.categories for f in strings.outputs] == [f.categories for f in strings.inputs]


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("classifier", np.zeros((10, 7)), "has 7 columns but the model takes 8"),
        ("classifier", np.zeros((10, 8, 1)), "must be a 2-D table"),
        ("classifier", np.zeros(10), r"must be a 2-D table \[rows, columns\], got shape \[10\]"),
        ("classifier", np.array([["a"] * 8] * 3), "takes FP32 numbers but the data holds strings"),
        ("classifier", np.zeros((0, 8)), "has no rows"),
        ("pair", np.zeros((10, 3)), r"model takes 4 \(a: 2, b: 2\)"),
        ("lookup", np.array([0.5, 1.0]), "takes INT64 integers but the data holds fractions"),
        ("lookup", np.array([np.nan, 1.0]), "fractions or missing values"),
        ("echo_bytes", np.zeros((4, 3)), "takes strings"),
        ("echo_bool", np.full((4, 3), 2), "BOOL but the data holds values other than 0/1"),
    ],
)
def test_a_sample_that_does_not_fit_the_model_is_refused(
    tmp_path: Path, model_files: dict[str, bytes], model: str, data: np.ndarray, message: str
) -> None:
    np.save(tmp_path / "bad.npy", data)
    with pytest.raises(ReferenceDataError, match=message):
        reference_profile(model_files[model], tmp_path / "bad.npy")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.csv", "1,2,3,4,5,6,7,8\n1,2,3,x,5,6,7,8\n", r"row 2, column 4: 'x' is not a number"),
        ("hdr.csv", "a,b,c,d,e,f,g,h\n1,2,3,4,5,6,7,oops\n", r"row 2, column 8: 'oops'"),
        ("ragged.csv", "1,2,3,4,5,6,7,8\n1,2,3\n", "row 2 has 3 cells, row 1 has 8"),
        ("empty.csv", "", "the CSV file is empty"),
        ("narrow.csv", "1,2\n3,4\n", "has 2 columns but the model takes 8"),
        ("data.parquet", "", r"must be a \.npy, \.npz or \.csv file"),
        ("data.npy", "not numpy", "not a NumPy file"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_with_the_place_of_the_problem(
    tmp_path: Path, model_files: dict[str, bytes], name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ReferenceDataError, match=message):
        reference_profile(model_files["classifier"], tmp_path / name)


def test_a_missing_file_and_a_fixed_batch_size_are_clear_errors(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    with pytest.raises(ReferenceDataError, match="no such file"):
        reference_profile(model_files["classifier"], tmp_path / "nope.npy")
    np.save(tmp_path / "one.npy", np.ones((3, 4), dtype=np.float32))
    profile = _profile(model_files["fixed"], tmp_path / "one.npy")  # batch of exactly 1
    assert profile.outputs[0].mean == 1.0
