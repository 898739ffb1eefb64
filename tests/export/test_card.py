"""The model card of a model the eval stage never saw, from a base model of unknown license:
a valid header that says 'other' and why, no model-index, and a body that says what is missing
instead of inventing it."""

from __future__ import annotations

import yaml

from tasks.export.card import BaseModelInfo, CardInputs, render_model_card


def test_an_unevaluated_model_of_unknown_license_gets_an_honest_card() -> None:
    inputs = CardInputs(
        name="my-model",
        stage=None,
        model_folder="elsewhere/model",
        base=BaseModelInfo(None, None, "copied from the local folder /somewhere"),
        license=None,
        start_urls=["https://docs.example.com/"],
        pages=None,
        data_hashes=[],
        synth={},
        system_prompt="Be right.",
        training_configs=[],
        eval_report=None,
        gate_report=None,
        export={"file": "model.gguf", "type": "q8_0", "verification": {"positions": 0}},
        export_folder="models/export",
    )
    card = render_model_card(inputs)
    _, header_text, body = card.split("---\n", 2)
    header = yaml.safe_load(header_text)
    assert header["license"] == "other" and "base_model" not in header
    assert "model-index" not in header
    assert "This model was not evaluated by the eval stage." in body
    assert "the base model's license is not recorded" in body
    assert "dvc.lock has no data stages recorded" in body
    assert "No generated training config lies on the path to this model." in body
    assert "Pages converted: not recorded" in body
