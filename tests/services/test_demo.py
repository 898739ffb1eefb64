"""Which llama.cpp servers the demo starts: one per URL on this machine, the judges' only on
ports no earlier server has."""

from tasks.core.params import EndpointParams, EvalParams, Params, SynthParams
from tasks.services.demo import plan_local_llms


def with_synth(**synth: object) -> Params:
    return Params(synth=SynthParams.model_validate(synth))


def test_the_default_starts_one_server_that_synth_and_the_eval_judge_share() -> None:
    assert plan_local_llms(Params()) == [(8766, "SmolLM2-135M-Instruct", "llama-server.log")]


def test_a_local_faithfulness_endpoint_gets_its_own_server_while_the_check_is_on() -> None:
    judge = {"base_url": ["http://127.0.0.1:8767/v1", "http://gpu-host:8000/v1"], "model": "j"}
    on = plan_local_llms(with_synth(faithfulness_check=True, faithfulness_endpoint=judge))
    assert on == [
        (8766, "SmolLM2-135M-Instruct", "llama-server.log"),
        (8767, "j", "llama-server-faithfulness.log"),
    ]
    off = plan_local_llms(with_synth(faithfulness_check=False, faithfulness_endpoint=judge))
    assert off == plan_local_llms(Params())


def test_a_judge_on_a_port_already_served_starts_nothing_more() -> None:
    synth_urls = ["http://127.0.0.1:8766/v1", "http://localhost:8768/v1"]
    params = with_synth(
        endpoint={"base_url": synth_urls},
        faithfulness_check=True,
        faithfulness_endpoint={"base_url": "http://127.0.0.1:8768/v1"},
    )
    judge = EndpointParams(base_url="http://127.0.0.1:8769/v1", model="e")
    params = params.model_copy(update={"eval": EvalParams(judge=judge)})
    assert plan_local_llms(params) == [
        (8766, "SmolLM2-135M-Instruct", "llama-server.log"),
        (8768, "SmolLM2-135M-Instruct", "llama-server-1.log"),
        (8769, "e", "llama-server-judge.log"),
    ]
