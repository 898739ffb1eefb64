"""The process environment of a stage: nothing phoning home, and Hugging Face hub access only
where params need the hub.

The built-in default and the tests run offline (every model and set is a local file), so the
flows start with the hub switched off. A stage that params point at the hub (a hub id as the
base model, a hub instruction set) switches it on for the process that downloads, unless the
user set the variables themselves: a value set by the user always wins.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

HUB_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# Set beside HUB_VARS when the pipeline, not the user, supplied them.
HUB_DEFAULT_MARK = "DOCS2MODEL_HUB_DEFAULT"
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "DEEPEVAL_TELEMETRY_OPT_OUT": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_stage_defaults(environ: MutableMapping[str, str]) -> None:
    """Quiet libraries and an offline hub, where the user has not said otherwise."""
    for key, value in QUIET_ENV.items():
        environ.setdefault(key, value)
    if not any(key in environ for key in HUB_VARS):
        environ.update(dict.fromkeys(HUB_VARS, "1"))
        environ[HUB_DEFAULT_MARK] = "1"


def user_set_hub(environ: Mapping[str, str]) -> bool:
    return environ.get(HUB_DEFAULT_MARK) != "1" and any(key in environ for key in HUB_VARS)


def hub_env(online: bool, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` for a process that needs the hub (`online`) or must not touch it; the user's
    own HF_*_OFFLINE values are kept either way."""
    if user_set_hub(environ):
        return dict(environ)
    return {**environ, **dict.fromkeys(HUB_VARS, "0" if online else "1"), HUB_DEFAULT_MARK: "1"}


def describe_hub_block(environ: Mapping[str, str]) -> str | None:
    """Why a download cannot reach the hub, when the user's environment forbids it."""
    blocked = [k for k in HUB_VARS if environ.get(k, "").strip().lower() in ("1", "true", "yes")]
    if blocked and user_set_hub(environ):
        names = " and ".join(f"{k}={environ[k]}" for k in blocked)
        return f"{names} is set in your environment; unset it (or set it to 0) to download"
    return None
