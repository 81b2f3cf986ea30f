# bnrepro: `make book` builds the HTML book, `make test` runs the tests.
# Both set everything up on a fresh machine and skip what is already done.

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
STAMP        := $(VENV)/.installed
KERNEL_CONF  := $(VENV)/etc/ipython/ipython_kernel_config.py
PROFILE      ?= cpu
JOBS         ?= 1
RUN_ARGS     ?=
CHAPTER      ?=
BUILD        := _build/$(PROFILE)
HTML         := $(BUILD)/_build/html
MATHJAX_VER  := 3.2.2
MATHJAX      := _mathjax/mathjax/tex-chtml.js
DEBIAN_FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: help setup data mathjax browser book test test-fast lint check-html bench gpu-check gpu-check-dry reproduce clean clean-book

help:
	@echo "make book    set up, then build the HTML book (PROFILE=cpu|smoke|paper, default cpu)"
	@echo "make test    set up, then run unit tests and execute every notebook (smoke profile)"
	@echo "make bench   training images/s: tensor-resident loop vs DataLoader loop"
	@echo "make lint    ruff on the package and the tests (part of make test)"
	@echo "make gpu-check   the 10-minute check of a CUDA device, report into results/gpu/ (options: ARGS='...')"
	@echo "make gpu-check-dry   the same check, tiny, on the CPU (--device cpu --dry-run), report in a temporary folder"
	@echo "make reproduce   run every experiment of PROFILE into results/ (resumable;"
	@echo "                 JOBS=4 runs four at a time, RUN_ARGS='--executor submitit' sends them to SLURM;"
	@echo "                 CHAPTER=lenet: one chapter's runs, then its claims)"

# --- set-up -----------------------------------------------------------------

setup: $(STAMP) $(KERNEL_CONF) data

# The venv is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python >= 3.10 or run make PYTHON=/path/to/python3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[book,test,sweep]'
	@touch $@

# The notebooks' kernels read this from the venv (see the file for why).
$(KERNEL_CONF): .jupyter/ipython_kernel_config.py $(STAMP)
	@mkdir -p $(@D) && cp $< $@

# Fashion-MNIST: present already (Debian package, $BNREPRO_DATA or the cache),
# else Debian's dataset-fashion-mnist when we may use apt, else torchvision's download.
data: $(STAMP)
	@if found=$$(BNREPRO_OFFLINE=1 $(PY) -m bnrepro data fashion-mnist 2>&1); then \
	  echo "$$found"; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  echo "installing Debian's dataset-fashion-mnist into $(DEBIAN_FMNIST)"; \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
	    || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
	    || { echo "apt-get failed; trying torchvision's download"; $(PY) -m bnrepro data fashion-mnist --fetch; }; \
	else \
	  echo "no root for apt-get (Debian package dataset-fashion-mnist): trying torchvision's download."; \
	  echo "Offline? Copy the four Fashion-MNIST idx files into a folder and set BNREPRO_DATA to it."; \
	  $(PY) -m bnrepro data fashion-mnist --fetch; \
	fi

# Chromium for the browser check of the built book: Debian's package when apt
# may be used; elsewhere the check is skipped and says why.
browser:
	@if command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  echo "installing Debian's chromium for the browser check"; \
	  $$SUDO apt-get install -y -q chromium >/dev/null \
	    || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; } \
	    || echo "could not install chromium: the browser check will be skipped"; \
	else echo "no chromium and no root for apt-get: the browser check will be skipped"; fi

# MathJax 3 from the npm registry, so the built book renders math offline.
mathjax: $(MATHJAX)
$(MATHJAX):
	@command -v npm >/dev/null || { echo "error: npm not found. Install Node.js (Debian: sudo apt-get install npm) so that 'make mathjax' can fetch MathJax $(MATHJAX_VER); without it math does not render offline."; exit 1; }
	npm install --prefix .mathjax --no-save --no-audit --no-fund --loglevel=error mathjax@$(MATHJAX_VER)
	rm -rf _mathjax && mkdir -p _mathjax
	cp -r .mathjax/node_modules/mathjax/es5 _mathjax/mathjax

# --- the book ---------------------------------------------------------------

# One build folder, and so one execution cache, per profile. The cache keys
# on notebook code only, so it is cleared when the package or the stored
# results it reads change.
BOOK_INPUTS := $(shell find bnrepro results -type f -not -path '*/__pycache__/*' 2>/dev/null)
$(BUILD)/.inputs: $(BOOK_INPUTS)
	@mkdir -p $(BUILD)
	@rm -rf $(BUILD)/_build/.jupyter_cache $(BUILD)/_build/.doctrees  # re-execute and re-read every chapter
	@touch $@

book: setup mathjax $(BUILD)/.inputs
	@start=$$(date +%s); \
	BNREPRO_PROFILE=$(PROFILE) $(VENV)/bin/jupyter-book build . --path-output $(BUILD) -W -n --keep-going \
	  && echo "Book built at profile $(PROFILE) in $$(( $$(date +%s) - start )) s: open $(CURDIR)/$(HTML)/index.html"

clean-book:
	rm -rf _build

# --- tests and measurements -------------------------------------------------

# The book built at the smoke profile (so a warning anywhere fails the tests),
# then the unit tests, the browser check of that build, and every notebook
# executed again by nbval. Results go to a throw-away store: the committed
# results/ stay as they are. The book's kernels draw with the inline backend
# (MPLBACKEND=Agg there would print "<Figure size ...>" instead of the figures);
# the tests use Agg.
test: setup browser lint
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	export BNREPRO_PROFILE=smoke BNREPRO_RESULTS=$$tmp/results; \
	$(MAKE) --no-print-directory book PROFILE=smoke \
	  && MPLBACKEND=Agg $(PY) -m pytest tests book --nbval-lax -p no:cacheprovider

check-html: browser
	$(PY) tests/browser_check.py $(HTML) --screenshots _build/screenshots

# ruff, configured in pyproject.toml: the package and the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check bnrepro tests

test-fast: setup
	$(PY) -m pytest tests -p no:cacheprovider

bench: setup
	$(PY) -m bnrepro bench

# The GPU check needs the venv only: missing datasets get random stand-ins (timing
# only), so a machine without network access runs it as it is.
ARGS ?=
gpu-check: $(STAMP)
	$(PY) -m bnrepro gpu-check $(ARGS)

gpu-check-dry: $(STAMP)
	$(PY) -m bnrepro gpu-check --device cpu --dry-run $(ARGS)

reproduce: setup
	@if [ -n "$(CHAPTER)" ]; then $(PY) -m bnrepro reproduce --chapter $(CHAPTER) --profile $(PROFILE) --jobs $(JOBS); exit $$?; fi; \
	for exp in $$($(PY) -c "from bnrepro.experiments import list_experiments as l; print(' '.join(e.name for e in l()))"); do \
	  $(PY) -m bnrepro run $$exp --profile $(PROFILE) --jobs $(JOBS) $(RUN_ARGS) || exit $$?; done

clean: clean-book
	rm -rf $(VENV) .mathjax _mathjax *.egg-info
