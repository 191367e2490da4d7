"""The reference experiment (Aperture's 10 users, max concurrency 2): `run` drives it, `report` writes the
Markdown report and plots, `prompts.json` is its prompt set."""
