# Scout Chat. The two commands of the README's quick start:
#   make run    set up .venv (first time: builds llama.cpp) and launch the app
#   make test   set up .venv with the test tools and run the test suite (offscreen)
PYTHON ?= python3

.PHONY: run test setup lint bench soak screenshots desktop-entry clean

run:
	$(PYTHON) scripts/bootstrap.py --run $(ARGS)

# Add Scout Chat to the applications menu and `scout-chat` to ~/.local/bin (runs .venv's app).
desktop-entry:
	$(PYTHON) scripts/bootstrap.py --run --no-launch
	sh packaging/linux/install-desktop-entry.sh

test:
	$(PYTHON) scripts/bootstrap.py --test $(ARGS)

setup:
	$(PYTHON) scripts/bootstrap.py

lint: setup
	.venv/bin/ruff check app tests bench scripts
	.venv/bin/ruff format --check app tests bench scripts
	.venv/bin/lint-imports
	.venv/bin/mypy app

bench: setup
	.venv/bin/python -m bench.generation
	.venv/bin/python -m bench.engine_process
	.venv/bin/python -m bench.ui_stall
	.venv/bin/python -m bench.planner
	.venv/bin/python -m bench.documents
	.venv/bin/python -m bench.attention
	.venv/bin/python -m bench.images
	.venv/bin/python -m bench.download

# The one-hour soak of issue 9 (RSS growth <= 5 % after warm-up, no GUI stall > 100 ms); exit 1 if missed.
SOAK_MINUTES ?= 60
soak: setup
	QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.soak --minutes $(SOAK_MINUTES) --trace

screenshots: setup
	QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshots.py docs
	QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/tree_screenshots.py docs

clean:
	rm -rf .venv build dist .pytest_cache .ruff_cache
