"""LlamaFactory's own loader reads the sets the datasets stage writes: its dataset_info.json,
the sharegpt SFT rows (system prompt, user, assistant) and the ranking preference rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasks.core.tokens import resolve_tokenizer
from tests.support.datasets_inputs import build, page_body, write_inputs

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Any:
    dirs = write_inputs(tmp_path_factory.mktemp("sets"), [page_body(n) for n in range(4)])
    build(dirs, eval_fraction=0.0)
    return dirs


def load_with_llamafactory(
    stage: str, dataset: str, dataset_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any]:
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    # SmolLM2's tokenizer with its chat template, as the base model folder holds it
    tokenizer_dir = resolve_tokenizer(None, Path(".cache/tokenizers"))[0].parent
    args = {
        "model_name_or_path": str(tokenizer_dir),
        "stage": stage,
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "cutoff_len": 512,
        "output_dir": str(out),
        "report_to": "none",
        "overwrite_cache": True,
        "use_cpu": True,
    }
    if stage == "dpo":
        args.update(pref_loss="orpo", pref_beta=0.1)
    model_args, data_args, training_args, *_ = get_train_args(args)
    module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    loaded = get_dataset(
        template,
        model_args,
        data_args,
        training_args,
        stage="rm" if stage == "dpo" else "sft",
        **module,
    )
    return loaded["train_dataset"], module["tokenizer"]


def test_llamafactory_reads_the_sft_set(
    sets: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, tokenizer = load_with_llamafactory("sft", "docs_sft", sets.sft, tmp_path, monkeypatch)
    assert len(data) == 8
    text = tokenizer.decode(data[0]["input_ids"])
    assert "You are an expert on the product documentation" in text  # the system prompt
    assert "What is p0w0?" in text and "(Source: http://docs.test/p0.html)" in text
    answer = [t for t in data[0]["labels"] if t != -100]
    assert "p0w0 is p0w1." in tokenizer.decode(answer)  # only the answer is trained on


def test_llamafactory_reads_the_preference_set(
    sets: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, tokenizer = load_with_llamafactory("dpo", "docs_pref", sets.orpo, tmp_path, monkeypatch)
    assert len(data) > 0
    row = data[0]
    chosen = tokenizer.decode([t for t in row["chosen_labels"] if t != -100])
    rejected = tokenizer.decode([t for t in row["rejected_labels"] if t != -100])
    assert chosen.startswith("Because") and rejected.startswith("No")
