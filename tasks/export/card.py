"""The exported model's Hugging Face model card (README.md with a YAML header) and its Ollama
Modelfile, written from what the pipeline recorded: params, dvc.lock, the stage reports and the
training configs in the model folders. Readers of the files (read_*) gather; render_* are pure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import yaml

from tasks.core.params import Params
from tasks.core.tokens import find_smollm2_gguf

# Read while the export stage runs, after DVC has recorded every stage before it; not a dvc.yaml
# dependency, since each stage's run rewrites it (the data it names are the model's deps).
LOCK_FILE = Path("dvc.lock")

# Stages whose outputs are the training data; their dvc.lock hashes are the card's lineage.
DATA_STAGES = ("crawl", "markdown", "synth", "datasets")
CONFIG_FILES = (
    "train_params.json",
    "ds_config.json",
    "train.yaml",
    "export.yaml",
    "deepspeed.json",
)
GGUF_QUANT_SUFFIX = re.compile(r"[.-](q\d\w*|f16|f32|bf16|iq\d\w*)$", re.IGNORECASE)
CHATML_PROBE = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
]
CHATML_RENDERED = (
    "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
    "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# Ollama's Go-template form of ChatML (what CHATML_RENDERED is). Ollama hands the system
# prompt both as .System and as a system entry of .Messages, so the loop renders only the
# other roles: the prompt appears once, at the top, as in training.
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    '{{- range .Messages }}{{- if ne .Role "system" }}'
    "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"
    "<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class BaseModelInfo:
    hub_id: str | None  # the card's base_model, when known
    license: str | None
    description: str  # where the base model came from, in words


@dataclass
class CardInputs:
    name: str
    stage: str | None  # the exported model's name in the eval report
    model_folder: str
    base: BaseModelInfo
    license: str | None
    start_urls: list[str]
    pages: int | None
    data_hashes: list[dict[str, Any]]
    synth: dict[str, Any]
    system_prompt: str
    training_configs: list[tuple[str, str]]
    eval_report: dict[str, Any] | None
    gate_report: dict[str, Any] | None
    export: dict[str, Any]
    export_folder: str  # where the GGUF lies in the repository
    general_datasets: list[str] = field(default_factory=list)


def read_json_if_present(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def read_data_hashes(lock_file: Path) -> list[dict[str, Any]]:
    """The md5 of every data output of the data stages, as dvc.lock records it."""
    if not lock_file.is_file():
        return []
    stages = (yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    rows = []
    for stage in DATA_STAGES:
        for out in stages.get(stage, {}).get("outs", []):
            if str(out.get("md5", "")).endswith(".dir"):  # folders: the data, not the reports
                rows.append(
                    {
                        "stage": stage,
                        "path": out["path"],
                        "md5": out["md5"],
                        "files": out.get("nfiles"),
                        "bytes": out.get("size"),
                    }
                )
    return rows


def read_training_configs(folders: list[Path]) -> list[tuple[str, str]]:
    """The generated training configs (LlamaFactory YAML, DeepSpeed JSON) of each folder."""
    found = []
    for folder in folders:
        for name in CONFIG_FILES:
            path = folder / name
            if path.is_file():
                found.append((str(path), path.read_text(encoding="utf-8")))
    return found


def read_gguf_base_info(gguf_file: Path) -> BaseModelInfo:
    """Name and license from a base GGUF's metadata; its hub id from the organization and
    the file name without the quantization suffix (as the hub names GGUF uploads)."""
    reader = gguf.GGUFReader(str(gguf_file))

    def text(key: str) -> str | None:
        found = reader.get_field(key)
        return None if found is None else str(found.contents())

    organization, stem = text("general.organization"), GGUF_QUANT_SUFFIX.sub("", gguf_file.stem)
    hub_id = f"{organization}/{stem}" if organization else None
    described = f"converted from the GGUF file {gguf_file.name} ({text('general.name')!r})"
    return BaseModelInfo(hub_id, text("general.license"), described)


def read_folder_base_info(source: dict[str, Any]) -> BaseModelInfo:
    if source.get("kind") == "hub":
        revision = f" at revision {source['revision']}" if source.get("revision") else ""
        return BaseModelInfo(source["id"], None, f"downloaded from the hub{revision}")
    return BaseModelInfo(None, None, f"copied from the local folder {source.get('path')}")


def render_license(inputs: CardInputs) -> tuple[str, str | None]:
    """The card's license and, for 'other', why."""
    if inputs.license:
        return inputs.license, None
    if inputs.base.license:
        return inputs.base.license, None
    return "other", "the base model's license is not recorded; check it before publishing"


def render_model_index(inputs: CardInputs) -> list[dict[str, Any]]:
    """The eval results of the exported model in the model-index layout, one entry per
    question set (probes, held_out) plus the perplexities."""
    if inputs.eval_report is None or inputs.stage not in inputs.eval_report.get("metrics", {}):
        return []
    by_set: dict[str, list[dict[str, Any]]] = {}
    for key, value in sorted(inputs.eval_report["metrics"][inputs.stage].items()):
        if value.get("value") is None:
            continue
        metric, _, qset = key.partition(".")
        qset = qset or metric.removeprefix("ppl_")
        kind = "perplexity" if metric.startswith("ppl_") else metric
        by_set.setdefault(qset, []).append({"type": kind, "name": key, "value": value["value"]})
    results = [
        {
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": {"name": f"docs2model {qset}", "type": qset},
            "metrics": metrics,
        }
        for qset, metrics in sorted(by_set.items())
    ]
    return [{"name": inputs.name, "results": results}]


def render_header(inputs: CardInputs) -> str:
    license_id, _ = render_license(inputs)
    header: dict[str, Any] = {}
    if inputs.base.hub_id:
        header["base_model"] = inputs.base.hub_id
    header["license"] = license_id
    if inputs.general_datasets:
        header["datasets"] = inputs.general_datasets
    header["library_name"] = "gguf"
    header["pipeline_tag"] = "text-generation"
    header["tags"] = ["gguf", "llama.cpp", "ollama", "docs2model", "domain-adaptation"]
    if model_index := render_model_index(inputs):
        header["model-index"] = model_index
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"


def render_lineage(inputs: CardInputs) -> list[str]:
    lines = ["## Data lineage", ""]
    lines += [f"- Documentation site: {', '.join(inputs.start_urls) or 'not recorded'}"]
    lines += [f"- Pages converted: {inputs.pages if inputs.pages is not None else 'not recorded'}"]
    if inputs.synth:
        lines += [
            f"- Synthetic Q/A and preference data: endpoint model "
            f"`{inputs.synth.get('endpoint_model')}`, prompt version "
            f"`{inputs.synth.get('prompt_version')}` ({inputs.synth.get('pairs')} Q/A pairs, "
            f"{inputs.synth.get('triples')} preference triples)"
        ]
    lines += [f"- Base model: {inputs.base.hub_id or 'no hub id'}, {inputs.base.description}"]
    lines += [f"- Exported from: `{inputs.model_folder}` (stage `{inputs.stage or 'unknown'}`)"]
    lines += ["", "Dataset versions (md5 from dvc.lock; `dvc get`/`dvc checkout` them back):", ""]
    lines += ["| stage | output | md5 | files |", "|---|---|---|---|"]
    lines += [
        f"| {r['stage']} | `{r['path']}` | `{r['md5']}` | {r['files']} |"
        for r in inputs.data_hashes
    ]
    if not inputs.data_hashes:
        lines += ["| - | dvc.lock has no data stages recorded | - | - |"]
    return lines


def render_training(inputs: CardInputs) -> list[str]:
    lines = ["## Training configs", ""]
    if not inputs.training_configs:
        return [*lines, "No generated training config lies on the path to this model.", ""]
    lines += ["Generated from params.yaml by the pipeline, as the trainers read them.", ""]
    for path, text in inputs.training_configs:
        fence = "json" if path.endswith(".json") else "yaml"
        lines += [f"<details><summary><code>{path}</code></summary>", "", f"```{fence}"]
        lines += [text.rstrip("\n"), "```", "", "</details>", ""]
    return lines


def render_metric_row(name: str, base: dict[str, Any] | None, ours: dict[str, Any]) -> str:
    def cell(m: dict[str, Any] | None) -> str:
        if not m or m.get("value") is None:
            return "n/a"
        interval = f" [{m['low']}, {m['high']}]" if m.get("low") is not None else ""
        return f"{m['value']}{interval}"

    return f"| {name} | {cell(base)} | {cell(ours)} | {ours.get('n')} |"


def render_evaluation(inputs: CardInputs) -> list[str]:
    lines = ["## Evaluation", ""]
    report = inputs.eval_report
    if report is None or inputs.stage not in report.get("metrics", {}):
        return [*lines, "This model was not evaluated by the eval stage.", ""]
    base_name = report.get("model_order", ["base"])[0]
    base, ours = report["metrics"].get(base_name, {}), report["metrics"][inputs.stage]
    lines += [
        f"Closed-book, on held-out pages and knowledge probes (questions about trained pages "
        f"that no training set holds); `{base_name}` is the starting model. Values with their "
        f"95% bootstrap interval; n is the number of items.",
        "",
        f"| metric | {base_name} | {inputs.stage} | n |",
        "|---|---|---|---|",
    ]
    lines += [render_metric_row(k, base.get(k), v) for k, v in sorted(ours.items())]
    headline = report.get("headline", {}).get("lines", [])
    lines += ["", "Headline, as the eval report words it:", ""]
    lines += [f"- {line}" for line in headline]
    gate = inputs.gate_report
    if gate is not None:
        verdict = "passed" if gate.get("passed") else f"failed: {gate.get('failed')}"
        lines += ["", f"Release gate (params.yaml `gate:`): {verdict}."]
    return [*lines, ""]


def render_judge(report: dict[str, Any] | None) -> str:
    judge = (report or {}).get("judge", {})
    return str(judge.get("model")) if judge.get("enabled") else "none (not run)"


def render_limits(inputs: CardInputs) -> list[str]:
    _, license_note = render_license(inputs)
    verification = inputs.export.get("verification", {})
    lines = ["## Limits", ""]
    lines += [
        "- A metric whose interval is wide, or whose n is small, says little: the headline "
        'marks those ("too few items to tell"). The numbers describe this documentation '
        "site's questions, not general ability.",
        f"- The judge-scored metrics (correctness, false-premise correction) are only as good "
        f"as the judge, `{render_judge(inputs.eval_report)}`.",
    ]
    if verification.get("positions"):
        lines += [
            f"- The {inputs.export['type']} GGUF picks the transformers model's next token at "
            f"{verification['matches']} of {verification['positions']} positions of a real "
            f"page ({verification['agreement']:.2%}); quantization changes near-ties."
        ]
    if license_note:
        lines += [f"- License: {license_note}."]
    return [*lines, ""]


def render_usage(inputs: CardInputs) -> list[str]:
    gguf_name = inputs.export["file"]
    return [
        "## Use",
        "",
        "```sh",
        f"ollama create {inputs.name} -f Modelfile && ollama run {inputs.name}",
        "# from a docs2model checkout: the OpenAI-compatible API on http://127.0.0.1:8766/v1",
        f"python -m tasks.llm.server --gguf {inputs.export_folder}/{gguf_name} "
        f"--alias {inputs.name}",
        f"llama-server -m {gguf_name}",
        "```",
        "",
        "System prompt used in training and evaluation:",
        "",
        f"> {inputs.system_prompt}",
        "",
    ]


def render_model_card(inputs: CardInputs) -> str:
    intro = [
        f"# {inputs.name}",
        "",
        f"A domain-expert model trained by docs2model on the documentation at "
        f"{', '.join(inputs.start_urls) or 'an unrecorded site'}, exported as GGUF "
        f"({inputs.export['type']}) for llama.cpp and Ollama. This card is generated by the "
        f"pipeline's export stage; edit params.yaml and rerun it rather than this file.",
        "",
    ]
    sections = [
        intro,
        render_usage(inputs),
        render_evaluation(inputs),
        render_limits(inputs),
        render_lineage(inputs),
        [""],
        render_training(inputs),
    ]
    return render_header(inputs) + "\n" + "\n".join(line for s in sections for line in s)


def render_modelfile(
    gguf_name: str, chat_template_rendered: str | None, system_prompt: str, stop: str | None
) -> str:
    """An Ollama Modelfile for the GGUF beside it. A ChatML chat template is written as
    Ollama's Go template; any other is left to Ollama, which reads tokenizer.chat_template
    from the GGUF."""
    lines = ["# Ollama: ollama create NAME -f Modelfile (generated by the export stage)", ""]
    lines += [f"FROM ./{gguf_name}", ""]
    if chat_template_rendered == CHATML_RENDERED:
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', ""]
    else:
        lines += ["# no TEMPLATE: Ollama takes the chat template from the GGUF", ""]
    lines += [f'SYSTEM """{system_prompt}"""', ""]
    if stop:
        lines += [f"PARAMETER stop {json.dumps(stop)}"]
    return "\n".join(lines) + "\n"


def read_chat_probe(folder: Path) -> tuple[str | None, str | None]:
    """The tokenizer's chat template applied to a probe conversation (None without a
    template), and its end-of-turn token: what the Modelfile's TEMPLATE and stop mirror."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    eos = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) else None
    if not tokenizer.chat_template:
        return None, eos
    rendered = tokenizer.apply_chat_template(
        CHATML_PROBE, tokenize=False, add_generation_prompt=True
    )
    return str(rendered), eos


def find_training_path(params: Params, folder: Path) -> tuple[str | None, list[Path]]:
    """The exported folder's stage name, and the folders that may hold the generated configs
    of the stages that led to it: a cpt phase writes them into its model folder, sft and orpo
    beside model/ (none for a folder the pipeline did not write)."""
    stages = list(params.model_folders().items())
    for i, (name, stage_folder) in enumerate(stages):
        if stage_folder.resolve() == folder.resolve():
            trained = [f for _, f in stages[1 : i + 1]]
            return name, list(dict.fromkeys(d for f in trained for d in (f, f.parent)))
    return None, []


def read_base_info(params: Params) -> BaseModelInfo:
    """The base model as the model stage recorded its source (reports/model.json)."""
    report = read_json_if_present(params.paths.reports / "model.json") or {}
    source = report.get("source", {})
    if source.get("kind") != "gguf":
        return read_folder_base_info(source)
    try:
        gguf_file = Path(params.model.gguf) if params.model.gguf else find_smollm2_gguf()
    except FileNotFoundError:
        gguf_file = None
    if gguf_file is None or not gguf_file.is_file():  # gone since: the card says what it knows
        return BaseModelInfo(None, None, f"converted from the GGUF file {source.get('file')}")
    return read_gguf_base_info(gguf_file)


def read_card_inputs(params: Params, export: dict[str, Any]) -> CardInputs:
    """Everything the card says, from params, dvc.lock and the stage reports."""
    reports, settings = params.paths.reports, params.export
    stage, config_folders = find_training_path(params, settings.model)
    markdown = read_json_if_present(reports / "markdown.json") or {}
    general = params.datasets.general_sft.hub_id
    return CardInputs(
        name=settings.name,
        stage=stage,
        model_folder=str(settings.model),
        base=read_base_info(params),
        license=settings.license,
        start_urls=[str(u) for u in params.crawl.start_urls] if params.crawl else [],
        pages=markdown.get("pages_out"),
        data_hashes=read_data_hashes(LOCK_FILE),
        synth=read_json_if_present(reports / "synth.json") or {},
        system_prompt=params.datasets.system_prompt,
        training_configs=read_training_configs(config_folders),
        eval_report=read_json_if_present(reports / "eval.json"),
        gate_report=read_json_if_present(reports / "gate.json"),
        export=export,
        export_folder=str(params.paths.export),
        general_datasets=[general] if general else [],
    )
