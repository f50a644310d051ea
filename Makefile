# wsicount — set-up, tests and demo in one command each.
#   make demo   -> venv + install + synthesize a slide (unless SLIDE=...) + wsicount run
#   make test   -> venv + install + pytest
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On these machines torch==2.13.0 is a local CPU wheel; elsewhere pick the build you need.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo-out
SLIDE ?=
DEMO_SIZE ?= 12288 12288

.PHONY: setup test demo clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	@mkdir -p $(DEMO_DIR)
	@if [ -z "$(SLIDE)" ]; then \
	  if [ ! -f $(DEMO_DIR)/demo.ndpi ]; then \
	    $(BIN)/wsicount synth $(DEMO_DIR)/demo.ndpi --format ndpi --size $(DEMO_SIZE) --seed 1 --look fluorescence; \
	  fi; \
	fi
	$(BIN)/wsicount info $(if $(SLIDE),$(SLIDE),$(DEMO_DIR)/demo.ndpi)
	$(BIN)/wsicount run $(if $(SLIDE),$(SLIDE),$(DEMO_DIR)/demo.ndpi) --out $(DEMO_DIR)/result --overwrite
	@echo "report: $(DEMO_DIR)/result/report.html"

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
