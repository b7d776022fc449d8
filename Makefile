# The two entry points of the README. Both bootstrap .venv first (once).
PY := .venv/bin/python

.PHONY: demo test bench lint bootstrap
bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m unlearnx.cli demo

test: bootstrap
	$(PY) -c "import unlearnx, json; print('build_info:', json.dumps(unlearnx.build_info()))"
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests benches/test_bench_cpu.py benches/test_efficacy.py --benchmark-disable

bench: bootstrap
	$(PY) -m benches.run --device cpu --losses nll npo simnpo flatten kl dipo dto --B 4 --T 128 512 2048 \
	    --D 512 --V 32000 --repeats 3 --name cpu-latest

lint: bootstrap
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
