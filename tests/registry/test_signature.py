"""The signature rule: how a version's inputs and outputs may differ from production's."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import modelzoo
from modelgate.registry.errors import InvalidRequestError, SignatureMismatchError
from modelgate.registry.signature import (
    check_allowance,
    check_fit,
    read_signature,
    signature_differences,
)
from modelgate.registry.types import TensorSignature


@dataclass(frozen=True)
class Sig:
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...] = (TensorSignature("label", "INT64", (-1,)),)


def tensor(name: str, shape: tuple[int, ...] = (-1, 4), datatype: str = "FP32") -> TensorSignature:
    return TensorSignature(name, datatype, shape)


PRODUCTION = Sig((tensor("input"),))


def differences(candidate: Sig, production: Sig = PRODUCTION) -> tuple[str, ...]:
    return signature_differences(production, candidate, "version 2")


def test_the_same_signature_fits_whatever_the_order() -> None:
    two = Sig((tensor("a"), tensor("b")), (tensor("y", (-1,)), tensor("z", (-1,))))
    swapped = Sig((tensor("b"), tensor("a")), (tensor("z", (-1,)), tensor("y", (-1,))))
    assert differences(swapped, two) == ()
    assert differences(PRODUCTION) == ()


def test_a_renamed_input_is_missing_and_names_the_new_one() -> None:
    assert differences(Sig((tensor("x"),))) == ("input 'input' is missing (version 2 has 'x')",)
    assert differences(Sig((tensor("x"), tensor("w")))) == (
        "input 'input' is missing (version 2 has 'x', 'w')",
    )
    assert differences(Sig(())) == ("input 'input' is missing (version 2 has no other input)",)


def test_an_extra_input_or_output_is_a_difference() -> None:
    assert differences(Sig((tensor("input"), tensor("mask")))) == (
        "version 2 has a new input 'mask'",
    )
    wider = Sig((tensor("input"),), (*PRODUCTION.outputs, tensor("score", (-1,))))
    assert differences(wider) == ("version 2 has a new output 'score'",)


def test_datatypes_must_match() -> None:
    label = Sig((tensor("input"),), (TensorSignature("label", "FP32", (-1,)),))
    assert differences(label) == ("output 'label' datatype INT64 != FP32",)
    assert differences(Sig((tensor("input", datatype="FP64"),))) == (
        "input 'input' datatype FP32 != FP64",
    )


@pytest.mark.parametrize(
    ("production", "candidate", "fits"),
    [
        ((-1, 4), (-1, 4), True),
        ((-1, 4), (-1, 5), False),  # another feature count
        ((-1, 4), (-1, -1), False),  # dynamic vs fixed after the batch dimension
        ((-1, -1), (-1, 4), False),
        ((-1, 4), (-1, 4, 1), False),  # another rank
        ((1, 4), (-1, 4), True),  # the batch dimension may widen ...
        ((1, 4), (1, 4), True),
        ((-1, 4), (1, 4), False),  # ... but not narrow: batches of 2 would fail
        ((2, 4), (3, 4), False),
        ((), (), True),  # scalars
    ],
)
def test_shapes_match_after_the_batch_dimension_which_may_only_widen(
    production: tuple[int, ...], candidate: tuple[int, ...], fits: bool
) -> None:
    found = differences(Sig((tensor("input", candidate),)), Sig((tensor("input", production),)))
    expected = () if fits else (f"input 'input' shape {list(production)} != {list(candidate)}",)
    assert found == expected


def test_every_difference_is_named_inputs_first() -> None:
    candidate = Sig(
        (tensor("x", (-1, 5)),),
        (TensorSignature("label", "FP32", (-1, 1)),),
    )
    assert differences(candidate) == (
        "input 'input' is missing (version 2 has 'x')",
        "output 'label' datatype INT64 != FP32",
        "output 'label' shape [-1] != [-1, 1]",
    )


def test_real_models_compare_by_their_onnx_signatures() -> None:
    classifier = Sig(*read_signature(modelzoo.classifier()))
    echo = Sig(*read_signature(modelzoo.echo("FP32", width=8)))
    assert differences(classifier, classifier) == ()
    assert differences(echo, classifier) == (
        "input 'input' is missing (version 2 has 'x')",
        "output 'label' is missing (version 2 has 'y')",
        "output 'probabilities' is missing (version 2 has 'y')",
    )


def test_check_fit_refuses_unless_allowed_and_lists_a_bounded_number() -> None:
    many = Sig(tuple(tensor(f"f{i}") for i in range(30)))
    with pytest.raises(SignatureMismatchError) as caught:
        check_fit(many, PRODUCTION, name="m", version=2, production_version=1, allow=False)
    message = str(caught.value)
    assert message.startswith(
        "the signature of version 2 of 'm' differs from production version 1's "
        "(production != version 2): input 'f0' is missing (version 2 has 'input'); "
    )
    assert "input 'f9' is missing" in message and "f10' is missing" not in message
    assert "; and 20 more. If clients are ready for version 2" in message
    assert "--allow-signature-change" in message and "\n" not in message
    assert len(caught.value.differences) == 30
    allowed = check_fit(many, PRODUCTION, name="m", version=2, production_version=1, allow=True)
    assert len(allowed) == 30
    assert check_fit(PRODUCTION, PRODUCTION, name="m", version=2, production_version=1,
                     allow=False) == ()  # fmt: skip


def test_a_production_signature_never_recorded_is_nothing_to_compare_with() -> None:
    unknown = Sig((), ())
    assert check_fit(unknown, PRODUCTION, name="m", version=2, production_version=1,
                     allow=False) == ()  # fmt: skip


def test_allowing_a_change_needs_a_reason() -> None:
    check_allowance(False, "")
    check_allowance(True, "clients send x since 2026-03")
    for reason in ("", "   "):
        with pytest.raises(InvalidRequestError, match="needs a reason"):
            check_allowance(True, reason)
