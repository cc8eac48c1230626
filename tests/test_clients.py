"""The clients people build on the OpenAI API, run for real against `lstmgen serve`: lm-evaluation-harness,
llm, LangChain and LiteLLM (the `clients` extra). Each answer is held to what the Python API gives for the
same seed and settings, so a client that worked by accident would fail here.

The model hub is out of reach: lm-eval's tasks are tiny local JSONL tasks written by the test, and
LiteLLM reads its model list from the package (LITELLM_LOCAL_MODEL_COST_MAP).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from lstmgen import Generator
from lstmgen.server import Limits

from .conftest import serving

needs = {name: pytest.mark.skipif(importlib.util.find_spec(module) is None,
                                  reason=f"needs {name}: pip install -e '.[clients]'")
         for name, module in (("lm-eval", "lm_eval"), ("llm", "llm"), ("langchain-openai", "langchain_openai"),
                              ("litellm", "litellm"))}
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def server(artifacts):
    gens = {"moe": Generator.load(artifacts["moe"]), "names": Generator.load(artifacts["names"])}
    with serving(gens, Limits()) as srv:  # moe, served first, is the default model
        yield srv


@pytest.fixture(scope="module")
def gens(server):
    return server.models.generators


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


def start_text(gen: Generator) -> str:
    return gen.tokenizer.decode(gen.manifest.start_ids)


# -- lm-evaluation-harness ----------------------------------------------------------------------------------
MC_DOCS = [{"context": "moe_szyslak: hey", "choices": [" homer.", " moe.", " barney."], "label": 0},
           {"context": "homer_simpson: a beer", "choices": [" please.", " now!"], "label": 1}]
GEN_DOCS = [{"context": "moe_szyslak:", "answer": "x"}, {"context": "homer_simpson: moe,", "answer": "x"}]


def lm_eval_tasks(folder) -> None:
    """A multiple-choice (log-likelihood) task and a generate_until task, each over a local JSONL file."""
    for name, docs, body in (
            ("lstmgen_mc", MC_DOCS, 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\n'
                                    'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\ntarget_delimiter: ""\n'
                                    "metric_list:\n  - metric: acc\n"),
            ("lstmgen_gen", GEN_DOCS, 'output_type: generate_until\ndoc_to_text: "{{context}}"\n'
                                      'doc_to_target: "{{answer}}"\ngeneration_kwargs:\n  until: ["\\n"]\n'
                                      "  max_gen_toks: 12\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n")):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                             f"    test: {folder / (name + '.jsonl')}\ntest_split: test\n{body}")


@needs["lm-eval"]
def test_lm_eval_local_completions_with_its_remote_tokenizer(server, gens, tmp_path):
    """lm-eval's defaults: tokenized requests (token ids) and, found at /tokenizer_info, the remote tokenizer.
    Its log-likelihoods equal `lstmgen score`'s; its greedy generations equal the Python API's."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm_eval_tasks(tmp_path)
    out = lm_eval.simple_evaluate(model="local-completions",
                                  model_args=f"base_url={server.url}/v1/completions,model=moe",
                                  tasks=["lstmgen_mc", "lstmgen_gen"], task_manager=TaskManager(include_path=str(tmp_path)),
                                  log_samples=True)
    moe = gens["moe"]
    for sample in out["samples"]["lstmgen_mc"]:
        doc = sample["doc"]
        for (loglikelihood, _), choice in zip([r[0] for r in sample["resps"]], doc["choices"]):
            text = start_text(moe) + doc["context"]
            assert loglikelihood == pytest.approx(moe.score(text).nats - moe.score(text + choice).nats, abs=1e-4)
    for sample in out["samples"]["lstmgen_gen"]:
        expected = moe.generate(prompt=sample["doc"]["context"], temperature=0, max_tokens=12, stop=["\n"], echo=False)
        assert sample["resps"][0][0] == expected[0]


# -- llm ----------------------------------------------------------------------------------------------------
def llm_cli(server, tmp_path, *args) -> str:
    (tmp_path / "extra-openai-models.yaml").write_text(textwrap.dedent(f"""\
        - model_id: lstmgen-moe
          model_name: moe
          api_base: "{server.url}/v1"
          completion: true
        - model_id: lstmgen-moe-chat
          model_name: moe
          api_base: "{server.url}/v1"
        """))
    env = {**os.environ, **OFFLINE, "LLM_USER_PATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "llm", *args], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


@needs["llm"]
def test_llm_streams_a_completion_with_logprobs_and_keeps_a_conversation(server, gens, tmp_path):
    moe = gens["moe"]
    text = llm_cli(server, tmp_path, "-m", "lstmgen-moe", "-o", "logprobs", "2", "-o", "max_tokens", "12",
                   "-o", "seed", "2", "moe_szyslak:")  # llm streams by default
    assert text.rstrip("\n") == moe.generate(prompt="moe_szyslak:", max_tokens=12, seed=2, echo=False)[0]
    [logged] = json.loads(llm_cli(server, tmp_path, "logs", "-n", "1", "--json"))
    assert logged["response_json"]["logprobs"]  # the streamed chunks' logprobs, kept by llm
    first = llm_cli(server, tmp_path, "-m", "lstmgen-moe-chat", "-o", "max_tokens", "12", "-o", "seed", "2", "hey moe")
    second = llm_cli(server, tmp_path, "-c", "-o", "max_tokens", "12", "-o", "seed", "3", "another one")
    history = [{"role": "user", "content": "hey moe"}, {"role": "assistant", "content": first.strip()},
               {"role": "user", "content": "another one"}]
    assert second.strip() == moe.chat(history, max_tokens=12, seed=3)[0]


# -- LangChain ----------------------------------------------------------------------------------------------
@needs["langchain-openai"]
def test_langchain_openai_invoke_batch_stream_with_logprobs(server, gens):
    from langchain_openai import OpenAI

    moe = gens["moe"]
    lm = OpenAI(model="moe", base_url=f"{server.url}/v1", api_key="none", max_tokens=12, seed=2, logprobs=2,
                temperature=0.9)  # LangChain's OpenAI sends its own default temperature (0.7) unless told
    expected = moe.generate(prompt="moe_szyslak:", max_tokens=12, seed=2, echo=False, temperature=0.9)[0]
    assert lm.invoke("moe_szyslak:") == expected
    assert lm.batch(["moe_szyslak:", "homer_simpson:"]) == [
        expected, moe.generate(prompt="homer_simpson:", max_tokens=12, seed=2, echo=False, temperature=0.9)[0]]
    assert "".join(lm.stream("moe_szyslak:")) == expected
    info = lm.generate(["moe_szyslak:"]).generations[0][0].generation_info
    assert len(info["logprobs"]["token_logprobs"]) == 12


@needs["langchain-openai"]
def test_langchain_chat_openai_invoke_and_stream(server, gens):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model="moe", base_url=f"{server.url}/v1", api_key="none", max_tokens=12, seed=2, temperature=0.9)
    expected = gens["moe"].chat([{"role": "user", "content": "hey moe"}], max_tokens=12, seed=2, temperature=0.9)[0]
    assert chat.invoke("hey moe").content == expected
    assert "".join(c.content for c in chat.stream("hey moe")) == expected


# -- LiteLLM ------------------------------------------------------------------------------------------------
@needs["litellm"]
def test_litellm_text_completion_with_token_ids_and_chat(server, gens):
    import litellm

    names, moe = gens["names"], gens["moe"]
    base = dict(api_base=f"{server.url}/v1", api_key="none")
    ids = names.tokenizer.encode("ma")
    out = litellm.text_completion(model="text-completion-openai/names", prompt=[ids], max_tokens=6, seed=3, **base)
    expected = names.generate(prompt="ma", max_tokens=6, seed=3, echo=False)[0]
    assert out.choices[0].text == expected and out.usage.prompt_tokens == 2
    streamed = litellm.text_completion(model="text-completion-openai/names", prompt="ma", max_tokens=6, seed=3,
                                       stream=True, **base)
    assert "".join(c.choices[0].text or "" for c in streamed) == expected
    messages = [{"role": "user", "content": "hey moe"}]
    reply = moe.chat(messages, max_tokens=20, seed=3)[0]
    assert litellm.completion(model="openai/moe", messages=messages, max_tokens=20, seed=3, **base) \
        .choices[0].message.content == reply
    chunks = litellm.completion(model="openai/moe", messages=messages, max_tokens=20, seed=3, stream=True, **base)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply
