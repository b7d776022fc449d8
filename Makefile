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
	$(PY) -m pytest -q

bench: bootstrap
	$(PY) -m benches.run --device cpu --losses npo --B 8 --T 1024 --D 512 --V 32000 --name cpu-npo

lint: bootstrap
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
