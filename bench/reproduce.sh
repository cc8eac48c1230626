#!/usr/bin/env bash
# Reproduces the shipped models' exports and every figure in bench/results/ and docs/MODELS.md.
# Run from the repository root with the venv's bin on PATH (installed with -c constraints.txt, the
# versions the committed figures ran), on an idle machine:
#   bench/reproduce.sh          everything: exports, training figures, bench (about an hour on a 2-core
#                               CPU after the recipes' training, recipes/*.toml, up to an hour each)
#   bench/reproduce.sh bench    the speed figures only: the suite (cpu.json/.txt/.png), the batch-1
#                               breakdowns and the shipped models' benches (about 40 minutes)
set -euo pipefail
R=bench/results
MODE=${1:-all}
case "$MODE" in all|bench) ;; *) echo "usage: bench/reproduce.sh [all|bench]" >&2; exit 2;; esac
mkdir -p "$R"
step() { echo "== $(date +%H:%M:%S) $*" >&2; }
step "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (an idle machine reads near 0)"

if [ "$MODE" = all ] && [ "${SKIP_EXPORT:-0}" != 1 ]; then
  for m in names moe shakespeare; do
    step "export $m"
    lstmgen export runs/$m --out exported/$m
    lstmgen export runs/$m --out exported/$m-int8 --int8 || echo "int8 $m not shipped (over 1% loss)" >&2
  done
fi

if [ "$MODE" = all ]; then
step "names, default settings, 10-minute budget (figure for the trainer issue)"
rm -rf runs/names-default
lstmgen train ../shared/data/names.txt --level char --records --out runs/names-default --time-budget 600 \
  --no-progress 2> "$R/names-default.log"
tail -n 3 "$R/names-default.log" >&2

step "data-parallel: 1 vs 2 processes, same global batch and seed"
for n in 1 2; do
  rm -rf runs/ddp-$n
  /usr/bin/time -f "%e s wall" lstmgen train ../shared/data/tinyshakespeare.txt --out runs/ddp-$n --nproc $n \
    --hidden-size 256 --batch-size 32 --seq-len 100 --max-steps 300 --eval-every 150 --dropout 0 \
    --no-progress 2> "$R/ddp-$n.log"
  tail -n 2 "$R/ddp-$n.log" >&2
done
python - <<'PY' > "$R/ddp.json"
import json
out = {}
for n in (1, 2):
    rows = [json.loads(l) for l in open(f"runs/ddp-{n}/metrics.jsonl")]
    out[n] = {"val": [r["val_nats_per_token"] for r in rows if "val_nats_per_token" in r],
              "tokens_per_s": [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]}
print(json.dumps(out, indent=1))
PY
fi

step "bench: full suite"
lstmgen bench --steps 32 --repeats 5 --detail --json "$R/cpu.json" > "$R/cpu.txt"
step "bench: batch-1 breakdown and fixed-cost candidates"
python -m lstmgen.bench.breakdown --models char-medium,word-10k --out "$R"
step "bench: generate.onnx's top-k nodes against the engine's sampler (word-10k's vocabulary)"
python -m lstmgen.bench.sampler_ops --json "$R/sampler_ops.json" > "$R/sampler_ops.txt"
step "bench: shipped models"
MODELS=$(cd exported && ls -d */ | tr -d / | grep -v __pycache__)
for m in $MODELS; do
  lstmgen bench --model exported/$m --batch-sizes 1,64 --backends engine-fp32,torch-default,torch-tuned \
    --no-compile --json "$R/model-$m.json" > "$R/model-$m.txt"
done
MODELS="$MODELS" python - <<'PY'
import json, os
rows, base = [], None
for m in os.environ["MODELS"].split():
    r = json.load(open(f"bench/results/model-{m}.json"))
    base = base or r
    rows += r["rows"]
base["rows"] = rows
json.dump(base, open("bench/results/models.json", "w"), indent=1)
PY

if [ "$MODE" = bench ]; then
  step "models page"
  python -m lstmgen.bench.models_page --bench "$R/models.json"
  step "done (bench figures only); load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  exit 0
fi

step "serve load test"
python -m lstmgen.bench.serve_load --model moe --clients 32 --requests 128 --max-tokens 64 > "$R/serve_load.json"

step "serve: old (stdlib) server against the new one (Starlette + uvicorn)"
python -m lstmgen.bench.serve_compare --model moe --json "$R/serve.json"

step "cold start: process start to first text of lstmgen generate"
python - <<'PY' > "$R/cold_start.json"
import json, shutil, statistics, subprocess, time
exe = shutil.which("lstmgen")
subprocess.run([exe, "generate", "--num", "1"], capture_output=True)  # warm the Numba cache
def once(args):
    t0 = time.perf_counter(); p = subprocess.Popen([exe, *args], stdout=subprocess.PIPE)
    p.stdout.read(1); first = time.perf_counter() - t0; p.stdout.read(); p.wait()
    return first, time.perf_counter() - t0
out = {}
for label, args in {"names --stream": ["generate", "names", "--stream", "--seed", "1"],
                    "shakespeare --stream": ["generate", "shakespeare", "--stream", "--seed", "1", "--max-tokens", "200"],
                    "names --num 10": ["generate", "names", "--num", "10", "--seed", "1"]}.items():
    runs = [once(args) for _ in range(7)]
    out[label] = {"first_text_s": statistics.median(r[0] for r in runs), "total_s": statistics.median(r[1] for r in runs)}
print(json.dumps(out, indent=1))
PY

step "models page"
python -m lstmgen.bench.models_page --bench "$R/models.json"
step "done"
