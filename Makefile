# wsicount — set-up, tests and demo in one command each.
#   make demo   -> venv + install + synthesize a slide (unless SLIDE=...) + wsicount run
#   make test   -> venv + install + pytest without the slow tier (CI runs this)
#   make test-all -> the whole suite, the slow and real-data tier included
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On these machines torch==2.13.0 is a local CPU wheel; elsewhere pick the build you need.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo-out
SLIDE ?=
DEMO_SIZE ?= 12288 12288
DEMO_SLIDE = $(if $(SLIDE),$(SLIDE),$(DEMO_DIR)/demo.ndpi)
# a real Hamamatsu DAPI scan, counted too when the shared data folder is there (not part of the repository)
SLIDES_DIR ?= ../shared/data/slides
DAPI_NDPI = $(SLIDES_DIR)/test3-DAPI-2-(387).ndpi

.PHONY: setup test test-all demo clean

# each step says what it does; pip lists what it collects, with a bar per download
PIP := $(BIN)/pip install --disable-pip-version-check
SAY := @printf '\n==> %s\n'

$(STAMP): pyproject.toml
	$(SAY) "[setup 1/3] creating the virtual environment $(VENV)"
	$(PY) -m venv $(VENV)
	$(SAY) "[setup 2/3] installing $(TORCH_SPEC) (a download of up to a few hundred MB the first time)"
	$(PIP) "$(TORCH_SPEC)"
	$(SAY) "[setup 3/3] installing wsicount and its dependencies (dask, zarr, openslide, ...)"
	$(PIP) -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(SAY) "running the tests without the slow tier (make test-all runs them all)"
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(SAY) "running every test, the slow and real-data tier included"
	$(BIN)/python -m pytest -q

demo: setup
	@mkdir -p $(DEMO_DIR)
	@if [ -z "$(SLIDE)" ] && [ ! -f $(DEMO_DIR)/demo.ndpi ]; then \
	  printf '\n==> %s\n' "[demo 1/3] synthesizing a $(DEMO_SIZE) px fluorescence slide: $(DEMO_DIR)/demo.ndpi"; \
	  $(BIN)/wsicount synth $(DEMO_DIR)/demo.ndpi --format ndpi --size $(DEMO_SIZE) --seed 1 --look fluorescence; \
	fi
	$(SAY) "[demo 2/3] wsicount info $(DEMO_SLIDE)"
	$(BIN)/wsicount info $(DEMO_SLIDE)
	$(SAY) "[demo 3/3] wsicount run $(DEMO_SLIDE) --out $(DEMO_DIR)/result"
	$(BIN)/wsicount run $(DEMO_SLIDE) --out $(DEMO_DIR)/result --overwrite
	@echo "report: $(DEMO_DIR)/result/report.html (open it in a web browser)"
	@if [ -f "$(DAPI_NDPI)" ]; then \
	  printf '\n==> %s\n' "[demo +] a real DAPI slide: wsicount run $(DAPI_NDPI) --model nuclei-fluo --channel dapi"; \
	  $(BIN)/wsicount run "$(DAPI_NDPI)" --model nuclei-fluo --channel dapi --out $(DEMO_DIR)/dapi --overwrite && \
	  printf '\n==> %s\n' "[demo +] its count beside a classical scikit-image count (benchmarks/classical_count.py)" && \
	  $(BIN)/python benchmarks/classical_count.py "$(DAPI_NDPI)" --channel dapi --mask-of $(DEMO_DIR)/dapi --beside && \
	  echo "report: $(DEMO_DIR)/dapi/report.html"; \
	else echo "(no real slide: $(DAPI_NDPI) not found; the shared data folder is optional)"; fi

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
