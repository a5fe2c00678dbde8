"""The request options have one owner: the form, the job record, the CLI and the engine agree."""

from __future__ import annotations

import typing

import pytest

from conventions import options
from conventions.errors import InputError
from model.networks import losses
from riir.cli import build_parser
from service.schemas import PairParams, SeriesParams


def test_every_entry_point_reads_the_same_options() -> None:
    for name in options.SIMILARITIES:  # each named similarity exists
        assert callable(losses.similarity_loss(name))
    assert PairParams is options.PairRequest and SeriesParams is options.SeriesOptions
    assert issubclass(PairParams, options.RegistrationOptions)  # + the DICOM request
    fields = PairParams.model_fields
    init = typing.get_args(fields["init"].annotation)  # Init | None
    assert typing.get_args(init[0]) == options.INITS and init[1] is type(None)
    steps = {type(m).__name__: m for m in fields["steps"].metadata}
    assert steps["Le"].le == options.MAX_STEPS
    # The CLI offers the same choices and every option by its own name.
    args = build_parser().parse_args(["register", "f.nii", "m.nii", "--out", "o"])
    assert set(options.RegistrationOptions.model_fields) <= set(vars(args))
    series = build_parser().parse_args(["register-series", "s.nii", "--out", "o"])
    assert set(options.SeriesOptions.model_fields) <= set(vars(series))


def test_a_job_record_round_trips_to_the_same_typed_options() -> None:
    asked = options.SeriesOptions(
        model="qmri-2d",
        steps=4,
        init="center",
        refine=5,
        refine_native=2,
        interpolation="sinc",
        template=2,
        keep_still=False,
    )
    assert options.check(options.SeriesOptions, asked.model_dump()) == asked


def test_an_untouched_form_field_or_an_absent_flag_means_the_default() -> None:
    blank = {name: "" for name in options.RegistrationOptions.model_fields}
    assert options.check(options.RegistrationOptions, blank) == options.RegistrationOptions()
    absent = {name: None for name in options.RegistrationOptions.model_fields}
    assert options.check(options.RegistrationOptions, absent).interpolation == "linear"
    # A series' yes/no option: blank is the model's own choice; the form's words are read.
    assert options.check(options.SeriesOptions, {"keep_still": ""}).keep_still is None
    assert options.check(options.SeriesOptions, {"keep_still": "false"}).keep_still is False
    assert options.check(options.SeriesOptions, {"keep_still": "true"}).keep_still is True
    with pytest.raises(InputError, match="keep_still"):
        options.check(options.SeriesOptions, {"keep_still": "perhaps"})


@pytest.mark.parametrize(
    "values",
    [
        {"steps": 0},
        {"steps": options.MAX_STEPS + 1},
        {"refine": -1},
        {"refine": options.MAX_REFINE + 1},
        {"refine_native": -1},
        {"refine_native": options.MAX_REFINE_NATIVE + 1},
        {"init": "affine?"},
        {"similarity": "ssd"},
        {"interpolation": "cubic"},
        {"unknown": 1},
    ],
)
def test_bad_options_are_refused_with_the_reason(values: dict[str, object]) -> None:
    with pytest.raises(InputError, match=next(iter(values))):
        options.check(options.RegistrationOptions, values)
