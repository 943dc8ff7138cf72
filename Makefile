# Every target creates the virtual environment on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast soak mission bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,tools]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bft demo --requests 40

test: $(STAMP)
	$(BIN)/python -m pytest

# The inner loop, under two minutes: every test not marked slow (unit tests, the golden interaction scripts),
# then a few simulator seeds.  Tests marked slow (real processes, scenarios, swarms, long property runs) run
# only in `make test`, which CI runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"
	$(BIN)/python -m harness sim --seeds 5

# Thousands of simulated runs with randomized faults; prints runs/second and fault coverage.
soak: $(STAMP)
	$(BIN)/python -m harness sim --seeds 2000

# Floor and ceiling of this machine, then latency, throughput, simulated scaling and a profile against them;
# a few minutes.  Writes bench/results/<run>/results.json and PNG plots, prints the table.
bench: $(STAMP)
	$(BIN)/python -m bench

# The mission scenario (n=5 against n=7, an approve-everything replica, 500 ms links) in simulation.
mission: $(STAMP)
	$(BIN)/python -m harness scenario mission --out mission-report

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
