#!/usr/bin/env bash
# On a lent GPU machine: every GPU test and the GPU benchmark rows, at most 8 minutes (the steps' limits add up to 480 s).
#
# It installs the wheels benchmarks/gpu/wheels.sh put into .whl (the machine's image has torch and
# transformers, not FastAPI, pydantic or the RabbitMQ clients), runs the CUDA tests, then the served-against-
# engine table (BLIP large shapes, fp16, 512 one-image requests), the throughput table (both decoders, and
# the decoder's steps without CUDA graphs) and the latency of an image arriving while a batch of 64 runs, and writes them
# into docs/benchmarks/ and, through the device tool, into $OUT. The RabbitMQ rows run only where a
# rabbitmq-server is found (the lent machines have none). From this machine:
#
#   benchmarks/gpu/wheels.sh
#   device run: command "benchmarks/gpu/run.sh", carry [".whl"], timeout_s 540
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1
out=${OUT:-.bench/gpu-run}
mkdir -p "$out" docs/benchmarks .bench
size=${BLIPQ_GPU_SIZE:-large}
device=${BLIPQ_GPU_DEVICE:-cuda}
dtype=${BLIPQ_GPU_DTYPE:-fp16}
images=${BLIPQ_GPU_IMAGES:-512}

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi

step() {  # step SECONDS NAME COMMAND...: run it with a time limit, say how it went, go on either way
    local limit=$1 name=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    local started=$SECONDS
    timeout "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - started)) s"
}

{
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
    nproc
    step 80 "checkpoint" python3 -c "from benchmarks.inputs import checkpoint, make_inputs; checkpoint('$size'); make_inputs(48)"
    # -o addopts=: the lent machine has no pytest-xdist; these tests run in one process.
    step 120 "GPU tests" python3 -m pytest -q -p no:cacheprovider -o addopts= -x --timeout 120 \
        tests/inference/test_cuda.py tests/inference/test_preprocess.py tests/engine_build/test_tensorrt_gpu.py
    step 110 "served against the engine" python3 -m benchmarks.throughput --served --size "$size" --device "$device" \
        --dtype "$dtype" --images "$images" --batch 64 --concurrency 128 --rounds 1 --no-scaling
    step 120 "throughput" python3 -m benchmarks.throughput --size "$size" --device "$device" --dtype "$dtype" \
        --images 64 --engine-batches 64 --reference-batch 8 --concurrency 64 --rounds 1
    step 50 "latency" python3 -m benchmarks.latency --size "$size" --device "$device" --dtype "$dtype" --batch 64 \
        --late-ms 300
} 2>&1 | tee "$out/gpu-run.log"
for table in served throughput latency; do
    cp docs/benchmarks/"$table"-"$size"-"${device/:/}"-"$dtype".md "$out"/ 2>/dev/null
done
ls "$out"
