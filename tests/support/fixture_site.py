"""The committed real pages (PostgreSQL 15, "Backup and Restore") and how tests crawl them."""

from __future__ import annotations

from pathlib import Path

from tasks.core.params import CrawlParams, MarkdownParams
from tasks.crawl.crawler import crawl_site
from tasks.services.local import serve_directory

FIXTURE_SITE = Path(__file__).parents[1] / "fixtures" / "sites" / "postgresql-15"
PARAMS = MarkdownParams(
    product_pattern=r"(PostgreSQL) [\d.]+ Documentation",
    version_pattern=r"PostgreSQL ([\d.]+) Documentation",
    workers=2,
)


def crawl(site: Path, raw: Path, port: int = 0) -> None:
    """Crawl `site` served on 127.0.0.1; re-crawls must reuse the port, as URLs are identity."""
    with serve_directory(site, port=port) as base:
        params = CrawlParams(start_urls=[base + "backup.html"], requests_per_second=None)
        crawl_site(params, raw, show_progress=False)
