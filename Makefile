# streamrec: the two commands a newcomer needs are `make demo` and `make test`.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml deploy/requirements-checks.txt | sha1sum | cut -c1-12)

.PHONY: install demo test test-fast faults lint docs bench kafka-start kafka-stop clean

# A virtualenv with streamrec and its test tools. uv installs it (pip takes minutes for
# torch's CUDA wheels; uv reuses its cache in ~/.cache/uv and takes seconds the second time).
install: $(STAMP)
$(STAMP): pyproject.toml deploy/requirements-checks.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[test]'
	# checkov (tests/deploy) pins its own dependency tree: it gets a virtualenv of its own.
	test -x $(VENV)/checks/bin/python || python3 -m venv $(VENV)/checks
	$(BIN)/uv pip install -q --python $(VENV)/checks/bin/python -r deploy/requirements-checks.txt
	rm -f $(VENV)/.installed-* && touch $@

# The main job: broker, topics, a first model, worker + trainer, live events, examples; then stops.
demo: install
	$(BIN)/streamrec demo

# Lint, then every test (integration tests start a local Kafka broker unless one is named).
test: lint
	$(BIN)/pytest

# The unit tests alone (no broker, no deploy tools): under two minutes.
test-fast: install
	$(BIN)/pytest tests/unit -q

# The fault-injection tests alone (kill -9, rebalances; they also run in `make test`).
faults: install
	$(BIN)/pytest -m faults -s

# Style, formatting, types (mypy on stream_worker/ and models/) and the import rules.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# docs/configuration.md, generated from stream_worker/config.py (a test checks it is in sync).
docs: install
	$(BIN)/python -m stream_worker.devtools.config_docs

# End-to-end speed on a local broker: stage limits, naive consumer, drain, latency per rate
# (prints a table; runs/bench/bench.json and bench.png). A few minutes.
bench: install
	$(BIN)/streamrec bench

kafka-start: install
	$(BIN)/streamrec kafka start

kafka-stop: install
	$(BIN)/streamrec kafka stop

clean:
	-$(BIN)/streamrec kafka stop
	rm -rf $(VENV) .cache runs .pytest_cache .ruff_cache
