# moodtunes: `make up` brings the whole system up on this machine; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROJECTS := packages/*/pyproject.toml services/*/pyproject.toml training/*/pyproject.toml

.PHONY: up down status test format install proto lock clean-var

$(STAMP): constraints.txt requirements-dev.txt $(PROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-dev.txt \
	  -e packages/moodtunes-common -e packages/moodtunes-tfserving -e services/gateway -e services/recommender \
	  -e services/fer -e services/model_server -e training/fer -e 'packages/moodtunes-cli[training]'
	# Only `make proto` needs tensorflow-serving-api (it reads its descriptors); it pins full
	# `tensorflow`, so it goes beside tensorflow-cpu without its dependencies
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt tensorflow-serving-api
	touch $@

install: $(STAMP)

# Everything runs under supervisord, which restarts any process that exits (`make status`).
# Scale with `make up FER_WORKERS=2 RECOMMENDER_WORKERS=2` (default 1 each; also on a running stack):
# shorthands for the stack's settings MOODTUNES_FER_WORKERS / MOODTUNES_RECOMMENDER_WORKERS, which
# can be set in the environment or .env instead, like the MOODTUNES_*_PORT settings.
up: $(STAMP)
	$(if $(FER_WORKERS),MOODTUNES_FER_WORKERS=$(FER_WORKERS)) \
	$(if $(RECOMMENDER_WORKERS),MOODTUNES_RECOMMENDER_WORKERS=$(RECOMMENDER_WORKERS)) \
	$(BIN)/moodtunes stack up

down:
	@if [ -x $(BIN)/moodtunes ]; then $(BIN)/moodtunes stack down; fi

status:
	@$(BIN)/moodtunes stack status

# Lint and format check first (fast, and what a reviewer would flag), then every test.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# Apply the formatter and ruff's safe fixes (what `make test` checks).
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Regenerate the Python code of proto/ (committed; tests check it is current): the events, and
# TF Serving's gRPC API (descriptors read from the installed TF packages, code into moodtunes-tfserving).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=packages/moodtunes-common/moodtunes/proto \
	  --pyi_out=packages/moodtunes-common/moodtunes/proto proto/moodtunes/v1/events.proto
	$(BIN)/python proto/tfserving/generate.py extract
	$(BIN)/python proto/tfserving/generate.py code

# Re-pin every third-party package from the current venv.
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean-var: down
	rm -rf .var
