"""The markdown stage: main content of each crawled page as Markdown with front matter."""
