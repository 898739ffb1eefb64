"""Local services for the demo and the tests: the docs site, the Prefect server, the demo runner."""
