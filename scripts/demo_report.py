"""Print the demo's two linear-probe results side by side (run by `make demo`)."""
import json
import sys
from pathlib import Path

run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
# the two probes' default folders: `infoview linear backbone=runs/demo` and `backbone=random:...`
pre, rnd = (json.loads((run / k / "linear.json").read_text()) for k in ("linear", "linear_random"))
pretrain = json.loads((run / "pretrain.json").read_text())
ceiling = pretrain.get("mi_ceiling")  # None for bounds without one (NWJ)
bound = f"{pretrain['mi']:.2f} nats" + (f" (its ceiling {ceiling:.2f})" if ceiling is not None else "")
print(f"\npretrained for {pretrain['epochs']:g} epochs ({pretrain['steps']} steps); last certified MI bound {bound}")
print(f"linear probe on digits, test split ({pre['num_test']} images), top-1:")
for name, result in (("pretrained encoder", pre), ("same encoder at its initial weights", rnd)):
    print(f"  {name:<36} {result['top1']:5.1f}%")
print(f"outputs in {run}/: curves.png, metrics.csv, tb/, checkpoints/, linear/, linear_random/")
