"""The options table (lstmgen.options) is the one declaration every interface derives from."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from lstmgen import Generator
from lstmgen.manifest import SamplingDefaults
from lstmgen.options import (
    BY_NAME,
    GRAPH,
    JS,
    NATIVE,
    OPENAI,
    OPTIONS,
    PYTHON,
    OptionError,
    UnknownOption,
    add_cli_flags,
    check_options,
    graph_omits,
    js_module,
    on_surface,
    refuse_unapplied,
)
from lstmgen.sampling import SamplingParams

from .conftest import REPO


def test_the_javascript_table_is_written_from_the_python_one():
    assert (REPO / "js" / "options.mjs").read_text(encoding="utf-8") == js_module(), \
        'js/options.mjs is stale: python -c "import lstmgen.options as o; o.write_js()"'


def test_sampling_params_and_manifest_defaults_have_one_field_per_row():
    assert [f.name for f in dataclasses.fields(SamplingParams)] == [o.name for o in OPTIONS if o.sampling]
    assert [f.name for f in dataclasses.fields(SamplingDefaults)] == [o.name for o in OPTIONS if o.manifest]
    assert SamplingDefaults().temperature == BY_NAME["temperature"].default


def test_the_python_api_lists_every_option_of_its_surface():
    params = inspect.signature(Generator.generate).parameters
    assert {o.name for o in on_surface(PYTHON)} <= set(params)
    assert "top_k" in Generator.generate.__doc__ and "an integer in [0, 1000000]" in Generator.generate.__doc__


def test_the_cli_gets_one_flag_per_option_with_its_default_shown():
    parser = argparse.ArgumentParser()
    add_cli_flags(parser, ["top_k", "stop", "echo", "allow_unk"])
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    assert "--top-k" in text and "--no-echo" in text and "--allow-unk" in text and "(default: the model's)" in text
    args = parser.parse_args(["--top-k", "3", "--stop", "a", "--stop", "b", "--no-echo"])
    assert (args.top_k, args.stop, args.echo, args.allow_unk) == (3, ["a", "b"], False, False)


def test_http_fields_are_the_options_of_each_surface():
    from lstmgen.server.limits import Limits
    from lstmgen.server.schemas import Schemas

    s = Schemas(Limits(max_tokens_limit=33), ["m"])
    assert {o.name for o in on_surface(NATIVE)} <= set(s.generate.model_fields)
    assert {o.openai_name or o.name for o in on_surface(OPENAI)} <= set(s.completion.model_fields)
    assert s.generate.model_json_schema()["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 33


def test_the_graph_omits_what_its_runtime_lacks_and_refuses_it():
    omitted = set(graph_omits())
    assert {"min_p", "repetition_penalty", "stop", "bias", "logit_bias"} <= omitted
    assert not omitted & {o.name for o in OPTIONS if GRAPH in o.runtimes}
    refuse_unapplied({"min_p": 0.0, "top_k": 5, "stop": []}, GRAPH, "generate.onnx")  # at their off values: fine
    with pytest.raises(OptionError, match="generate.onnx does not apply min_p"):
        refuse_unapplied({"min_p": 0.1}, GRAPH, "generate.onnx")
    assert {o.name for o in OPTIONS if JS in o.runtimes} == {o.name for o in OPTIONS if GRAPH in o.runtimes}


@pytest.mark.parametrize("values, message", [
    ({"top_k": 1e20}, "top_k must be an integer in [0, 1000000], got 1e+20"),
    ({"top_k": 10**20}, "top_k must be an integer in [0, 1000000]"),
    ({"temperature": float("nan")}, "temperature must be a number in [0, 100], got nan"),
    ({"echo": "x"}, "echo must be true or false, got 'x'"),
    ({"stop": 5}, "stop must be a text or a list of texts, none empty, at most 16, got 5"),
    ({"seed": 2**63}, "seed must be an integer in [0, 2^63)"),
    ({"logit_bias": {"x": 1}}, "logit_bias must be an object mapping token ids"),
])
def test_one_range_one_message(values, message):
    with pytest.raises(OptionError) as e:
        check_options(values)
    assert str(e.value).startswith(message)
    assert e.value.spelled("--x").startswith("--x must be") or "must be" not in message


def test_caps_lower_the_range_and_tiny_temperatures_are_greedy():
    with pytest.raises(OptionError, match=r"max_tokens must be an integer in \[0, 50\], got 51"):
        check_options({"max_tokens": 51}, caps={"max_tokens": 50})
    assert check_options({"temperature": 1e-320})["temperature"] == 0.0


def test_an_unknown_option_is_a_type_error_naming_it():
    with pytest.raises(UnknownOption) as e:
        check_options({"progres": 1})
    assert isinstance(e.value, TypeError) and "progres" in str(e.value)
