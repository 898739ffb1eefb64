"""Two releases of a small docs site, each run through crawl → markdown → synth → datasets (the
stages' own functions, a scripted endpoint, a word tokenizer) in a git + DVC repo, the outputs
recorded in dvc.lock by `dvc commit` and the commit tagged. Release v2 differs from v1 by one
page added, one removed, one changed, one moved and one whose template change breaks extraction.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.core.io import write_json_atomic
from tasks.core.params import CrawlParams, DatasetsParams, MarkdownParams, SynthParams
from tasks.core.procs import free_port
from tasks.crawl.crawler import crawl_site
from tasks.datasets.build import DatasetDirs, build_datasets
from tasks.markdown.build import build_markdown
from tasks.services.local import serve_directory
from tasks.synth.generate import SynthDirs, read_token_counter, run_synth
from tests.support.datasets_inputs import MIX, PHASES, WORDS
from tests.support.synth_fakes import ScriptedClient

REPO = Path(__file__).resolve().parents[2]
TOKENIZERS = REPO / ".cache" / "tokenizers"  # shared with the markdown and synth tests

PAGES = {
    "install": (
        "Installing Widget",
        [
            (
                "Requirements",
                "Widget runs on any system with a C compiler and GNU make. "
                "The build needs about two hundred megabytes of free disk space.",
            ),
            (
                "Building from source",
                "Unpack the release archive and run the configure script. "
                "Then run make install as a user who may write to the prefix.",
            ),
        ],
    ),
    "configure": (
        "Configuring Widget",
        [
            (
                "The configuration file",
                "Widget reads its settings from widget.conf at startup. "
                "Each line holds one setting and its value, separated by an equals sign.",
            ),
            (
                "Reloading",
                "Send the server a hangup signal to reload the configuration file. "
                "Settings that need a restart are logged and keep their old value.",
            ),
        ],
    ),
    "backup": (
        "Backing up Widget",
        [
            (
                "Dumps",
                "The widget-dump tool writes every table to one portable archive file. "
                "Restore an archive with widget-restore into an empty data folder.",
            ),
        ],
    ),
    "upgrade": (
        "Upgrading Widget",
        [
            (
                "Before you start",
                "Read the release notes of every version between yours and the "
                "new one. Take a fresh dump so that a failed upgrade can be rolled back.",
            ),
        ],
    ),
    "tuning": (
        "Tuning Widget",
        [
            (
                "Memory",
                "The cache_size setting bounds the memory Widget keeps for hot pages. "
                "Raise it until the hit ratio stops growing on your workload.",
            ),
            (
                "Workers",
                "The workers setting sets how many requests are served at once. "
                "One worker per processor core is a sound starting point for most servers.",
            ),
            (
                "Logging",
                "Verbose logging slows every request down by a measurable amount. "
                "Turn it on while you investigate a problem and off again afterwards.",
            ),
        ],
    ),
    "security": (
        "Securing Widget",
        [
            (
                "Passwords",
                "Widget stores only salted hashes of the passwords its users choose. "
                "An administrator can force a reset with the widget-passwd tool.",
            ),
        ],
    ),
}
V1 = ("install", "configure", "backup", "upgrade", "tuning")
# v2: backup removed, security added, upgrade moved to a new URL, configure edited, and the
# tuning page's template now renders its text from a script, which extraction cannot see.
V2 = ("install", "configure", "upgrade-guide", "tuning", "security")
CONFIGURE_EDIT = (
    "Reloading",
    "Reloading and validation",
    "Run widget-check on the file before reloading: it names every line it cannot parse.",
)


def render_sections(sections: list[tuple[str, str]]) -> str:
    return "".join(f"<h2>{head}</h2>\n<p>{text}</p>\n" for head, text in sections)


def render_page(title: str, sections: list[tuple[str, str]], broken: bool = False) -> str:
    main = f"<h1>{title}</h1>\n" + render_sections(sections)
    if broken:
        data = json.dumps({"sections": sections})
        main = f"<h1>{title}</h1>\n<p>Loading the page.</p>\n<script>var page = {data};</script>\n"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title} (Widget 2.1 Documentation)</title></head>\n<body>\n"
        f'<div class="content">\n{main}</div>\n</body></html>\n'
    )


# Fixed file times, a release apart: the static server answers If-Modified-Since to the second,
# so a page rewritten within the second of the first crawl would be "not modified".
MTIMES = {False: 1_700_000_000, True: 1_700_086_400}


def write_site(site: Path, names: tuple[str, ...], v2: bool) -> None:
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for name in names:
        key = "upgrade" if name == "upgrade-guide" else name
        title, sections = PAGES[key]
        if v2 and key == "configure":
            old_head, new_head, extra = CONFIGURE_EDIT
            sections = [(new_head if h == old_head else h, t) for h, t in sections]
            sections.append(("Checking the file", extra))
        html = render_page(title, sections, broken=v2 and key == "tuning")
        (site / f"{name}.html").write_text(html, "utf-8")
        os.utime(site / f"{name}.html", (MTIMES[v2], MTIMES[v2]))


def params_for(base: str, names: tuple[str, ...]) -> dict[str, object]:
    return {
        "crawl": {
            "start_urls": [f"{base}{n}.html" for n in names],
            "max_depth": 0,
            "use_sitemap": False,
            "requests_per_second": None,
        },
        "markdown": {"product_pattern": r"(Widget) [\d.]+ Documentation", "workers": 1},
    }


DVC_YAML = {
    "stages": {
        "crawl": {
            "cmd": "true",
            "outs": ["data/raw"],
            "metrics": [{"reports/crawl.json": {"cache": False}}],
        },
        "markdown": {
            "cmd": "true",
            "deps": ["data/raw"],
            "outs": ["data/markdown"],
            "metrics": [{"reports/markdown.json": {"cache": False}}],
        },
        "synth": {
            "cmd": "true",
            "deps": ["data/markdown"],
            "outs": ["data/qa", "data/pref", "data/synth_cache"],
            "metrics": [{"reports/synth.json": {"cache": False}}],
        },
        "datasets": {
            "cmd": "true",
            "deps": ["data/markdown", "data/qa", "data/pref"],
            "outs": ["data/eval", "data/cpt", "data/sft", "data/orpo"],
            "metrics": [{"reports/datasets.json": {"cache": False}}],
        },
    }
}


def run_tool(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    if args[0] == "dvc":
        args = (str(Path(sys.executable).parent / "dvc"), *args[1:])
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout


def run_stages(repo: Path, params: dict[str, object]) -> None:
    """crawl → markdown → synth → datasets, as the flows call them, reports written."""
    data, reports = repo / "data", repo / "reports"
    crawl = CrawlParams(**params["crawl"])  # type: ignore[arg-type]
    markdown = MarkdownParams(**params["markdown"])  # type: ignore[arg-type]
    out = {"crawl": crawl_site(crawl, data / "raw", show_progress=False)}
    out["markdown"] = build_markdown(data / "raw", data / "markdown", markdown, TOKENIZERS)
    synth_dirs = SynthDirs(data / "markdown", data / "qa", data / "pref", data / "synth_cache")
    count = read_token_counter(None, TOKENIZERS)
    out["synth"] = asyncio.run(run_synth(ScriptedClient(), synth_dirs, SynthParams(), count))
    dirs = DatasetDirs(
        *(data / n for n in ("markdown", "qa", "pref", "base", "eval", "cpt", "sft", "orpo"))
    )
    sets = DatasetsParams(pii={"kinds": []}, probe_fraction=0.0)  # type: ignore[arg-type]
    out["datasets"] = build_datasets(dirs, sets, PHASES, MIX, WORDS)
    for stage, report in out.items():
        write_json_atomic(reports / f"{stage}.json", report)


@dataclass
class Releases:
    repo: Path
    site: Path
    base: str  # the site's URL; the port is kept, as URLs are page identity


def release(repo: Path, site: Path, port: int, names: tuple[str, ...], v2: bool, tag: str) -> str:
    write_site(site, names, v2)
    with serve_directory(site, port=port) as base:
        params = params_for(base, names)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run_stages(repo, params)
    run_tool(repo, "dvc", "commit", "-f", "-q")
    run_tool(repo, "git", "add", "-A")
    run_tool(repo, "git", "commit", "-q", "-m", tag)
    run_tool(repo, "git", "tag", tag)
    return base


def build_releases(root: Path) -> Releases:
    """Tags v1 and v2 in a fresh repo at root/repo; the site is served only while crawled."""
    repo, site, port = root / "repo", root / "site", free_port()
    repo.mkdir(parents=True)
    run_tool(repo, "git", "init", "-q")
    run_tool(repo, "dvc", "init", "-q")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    release(repo, site, port, V1, v2=False, tag="v1")
    base = release(repo, site, port, V2, v2=True, tag="v2")
    return Releases(repo, site, base)
