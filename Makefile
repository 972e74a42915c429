PY ?= python3
.PHONY: setup test bench run
setup:            ## install hrmlab with its tools (CPU torch pinned through constraints.txt)
	$(PY) -m pip install -c constraints.txt -e ".[dev,modal,gym,slurm]"
test:
	$(PY) -m pytest -x
bench:
	hrmlab bench --json docs/bench.json
run:
	hrmlab run
