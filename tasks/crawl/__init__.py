"""The crawl stage: a polite crawler of a documentation site into data/raw."""
